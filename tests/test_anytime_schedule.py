"""The "matched" nested schedule (the default for restoration) and budgets planned from the start: S = 1
is plain DDRM, the first preview is plain DDRM with as many calls, NFEs are counted exactly, and a budget
never leaves a short last inner run (the marks restore announces are the ones nested produces)."""
import itertools

import pytest
import torch

import degradations
import solvers
from _toy_ops import Recorder, random_gaussian_prior
from ipsolve.restore import preview_marks


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def prior():
    return random_gaussian_prior((1, 4, 4), generator(0))


@pytest.fixture(scope="module", params=["sr2", "inp"])
def measurement(prior, request):
    op = degradations.make(request.param, channels=1, image_size=(4, 4), seed=0)
    clean = op.H(prior.sample(3, generator(1)))
    return {"y": clean + 0.1 * torch.randn(clean.shape, generator=generator(2), dtype=torch.float64),
            "op": op, "sigma_y": 0.1}


@pytest.mark.parametrize("calls", [7, 10, 30, 64])
def test_one_outer_step_is_plain_ddrm_with_exactly_that_many_calls(prior, measurement, calls):
    model = Recorder(prior)
    plain = solvers.ddrm(prior, timesteps=solvers.plain_ddrm_timesteps(calls), generator=generator(4), **measurement)
    run = solvers.nested(model, "ddrm", outer_steps=1, inner_steps=calls, generator=generator(4), **measurement)
    (preview,) = list(run)
    assert torch.equal(preview.x0, plain) and preview.nfe == calls == len(model.calls)


@pytest.mark.parametrize("outer,inner,schedule", [(3, 10, "uniform"), (5, 6, "uniform"), (4, 5, "front"),
                                                  (3, 10, "back"), (6, 5, "uniform")])
def test_first_preview_is_plain_ddrm_with_as_many_calls(prior, measurement, outer, inner, schedule):
    run = solvers.nested(prior, "ddrm", outer_steps=outer, inner_steps=inner, inner_schedule=schedule,
                         generator=generator(5), **measurement)
    first = next(run)
    plain = solvers.ddrm(prior, timesteps=solvers.plain_ddrm_timesteps(first.nfe), generator=generator(5),
                         **measurement)
    assert torch.equal(first.x0, plain)
    assert first.nfe == solvers.inner_step_counts(outer * inner, outer, schedule)[0]


@pytest.mark.parametrize("outer,inner,budget", [(3, 10, None), (4, 5, 16), (4, 5, 20), (4, 5, 3), (5, 6, 29),
                                                (2, 7, 100)])
def test_nfe_accounting_and_marks_shared_with_restore(prior, measurement, outer, inner, budget):
    model, calls = Recorder(prior), []
    run = solvers.nested(model, "ddrm", outer_steps=outer, inner_steps=inner, budget=budget, generator=generator(),
                         callback=lambda info: calls.append(info["nfe"]), **measurement)
    previews = list(run)
    spent = min(outer * inner, budget or outer * inner)
    assert [p.nfe for p in previews] == list(itertools.accumulate(len(g) for g in run.inner_timesteps))
    assert previews[-1].nfe == spent == run.total_nfe == len(model.calls) and calls == list(range(1, spent + 1))
    assert [int(t[0]) for t, _ in model.calls] == sum(run.inner_timesteps, [])
    runs = [len(g) for g in run.inner_timesteps]
    assert min(runs) >= min(inner, spent)  # planned, not truncated: no run shorter than asked
    if budget is None or inner <= budget <= outer * inner:  # restore refuses a budget above all runs
        assert [p.nfe for p in previews] == preview_marks(outer, inner, budget)


def test_budget_sixteen_over_four_runs_of_five_is_six_five_five(prior, measurement):
    run = solvers.nested(prior, "ddrm", outer_steps=4, inner_steps=5, budget=16, **measurement)
    assert [len(g) for g in run.inner_timesteps] == [6, 5, 5]
    assert run.inner_timesteps == solvers.matched_inner_timesteps([6, 5, 5], reach=1.0)


def test_planned_inner_counts():
    assert solvers.planned_inner_counts([10, 10, 10], 25) == [13, 12]
    assert solvers.planned_inner_counts([10, 10, 10], 7) == [7]
    assert solvers.planned_inner_counts([10, 10, 10], 30) == [10, 10, 10]
    assert solvers.planned_inner_counts([5, 5, 5, 5], 16) == [6, 5, 5]
    assert solvers.planned_inner_counts([5, 10, 15], 20) == [7, 13]
    assert solvers.planned_inner_counts([3, 3], None) == [3, 3]
    for budget in range(1, 40):
        counts = solvers.planned_inner_counts([5, 6, 7, 8], budget)
        assert sum(counts) == min(budget, 26) and min(counts) >= min(5, budget)
    with pytest.raises(ValueError, match="budget"):
        solvers.planned_inner_counts([3, 3], 0)


def test_planned_inner_counts_by_hand():
    """A budget ending exactly where a run ends keeps that run; the calls left after flooring the shares go
    to the largest remainders: 20 over [10, 5, 10] keeps [10, 5], shares 13⅓, 6⅔ → [13, 7]; 11 over
    [7, 3, 5] keeps [7, 3], shares 7.7, 3.3 → [8, 3]."""
    assert solvers.planned_inner_counts([5, 5, 5], 10) == [5, 5]
    assert solvers.planned_inner_counts([10, 5, 10], 20) == [13, 7]
    assert solvers.planned_inner_counts([7, 3, 5], 11) == [8, 3]
    with pytest.raises(ValueError, match="at least 1"):
        solvers.planned_inner_counts([3, 0])


def test_matched_grids_step_like_plain_ddrm_with_the_calls_made_so_far():
    grids = solvers.matched_inner_timesteps([10, 10, 10], reach=1.0)
    assert grids == [solvers.ddrm_timesteps(10), solvers.ddrm_timesteps(20)[-10:], solvers.ddrm_timesteps(30)[-10:]]
    for reach in (1.0, 0.9, 0.8):
        grids = solvers.matched_inner_timesteps([6, 5, 5, 5], reach=reach)
        assert grids[0] == solvers.plain_ddrm_timesteps(6) and [len(g) for g in grids] == [6, 5, 5, 5]
        assert all(g[-1] == 0 and g == sorted(g, reverse=True) for g in grids)
        assert all(a[0] > b[0] for a, b in zip(grids, grids[1:]))
    assert [g[0] for g in solvers.matched_inner_timesteps([2, 20])] == [500, 855]  # 19 × (1000 // 22)
    many = solvers.matched_inner_timesteps([5] * 200)  # tails coincide at the end: equal outer times
    assert many[-1] == [4, 3, 2, 1, 0] and all(a[0] >= b[0] for a, b in zip(many, many[1:]))


def test_matched_grids_by_hand():
    """Counts 6, 5: run 1 is plain DDRM for 6 calls (skip 166); run 2 ends after 11 calls, on plain DDRM's
    grid for 11 (skip 90), tail 360…0; reach 0.8 starts it at round(0.8 × 360) = 288 instead, evenly spaced.
    With the generation samplers' plain grid (evenly spaced on [0, 999]) run 2 (7 calls in all) is that
    grid's exact tail, not re-spaced from its top. Near t = 0 a lower start keeps `count` distinct times."""
    first = [830, 664, 498, 332, 166, 0]
    assert solvers.matched_inner_timesteps([6, 5], reach=0.8) == [first, [288, 216, 144, 72, 0]]
    assert solvers.matched_inner_timesteps([6, 5]) == [first, [360, 270, 180, 90, 0]]
    def generation(n, num_train):
        return solvers.inner_timesteps(num_train - 1, n)

    assert solvers.inner_timesteps(999, 7) == [999, 832, 666, 500, 333, 166, 0]
    assert solvers.matched_inner_timesteps([3, 4], generation) == [[999, 500, 0], [500, 333, 166, 0]]
    assert solvers.matched_inner_timesteps([5] * 200, reach=0.8)[-1] == [4, 3, 2, 1, 0]


def test_plain_and_matched_grids_follow_the_schedule_length():
    assert solvers.plain_ddrm_timesteps(5, 50) == [40, 30, 20, 10, 0]
    assert solvers.matched_inner_timesteps([2, 3], num_train=50) == [[25, 0], [20, 10, 0]]


def test_very_many_outer_steps_run(prior, measurement):
    run = solvers.nested(prior, "ddrm", outer_steps=200, inner_steps=5, **measurement)
    previews = list(run)
    assert len(previews) == 200 and previews[-1].nfe == 1000 and torch.isfinite(previews[-1].x0).all()


def test_generation_keeps_the_paper_schedule_by_default(prior):
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=generator(3))
    run = solvers.nested(prior, "ddim", outer_steps=5, inner_steps=4, x_T=x_T)
    assert run.outer_timesteps == [999, 799, 599, 400, 200]
    matched = solvers.nested(prior, "ddim", outer_steps=3, inner_steps=4, x_T=x_T, schedule="matched")
    assert matched.inner_timesteps[0] == solvers.inner_timesteps(999, 4)
    first = next(matched).x0
    assert torch.equal(first, solvers.ddim(prior, x_T, solvers.inner_timesteps(999, 4)))


@pytest.mark.parametrize("inner, options", [
    ("ddrm", dict(outer_steps=3, inner_steps=10)), ("ddrm", dict(outer_steps=4, inner_steps=5, budget=16)),
    ("ddrm", dict(outer_steps=3, inner_steps=10, schedule="paper")),
    ("ddrm", dict(outer_steps=4, inner_steps=20, inner_schedule="front")),
    ("ddim", dict(outer_steps=3, inner_steps=4)), ("ddim", dict(outer_steps=3, inner_steps=4, schedule="matched"))])
def test_plan_is_what_nested_runs(prior, measurement, inner, options):
    """restore checks a request with solvers.plan before writing anything: its (outer times, inner grids) are
    the ones the nested run then uses (schedule by default matched for ddrm, paper for generation)."""
    given = measurement if inner == "ddrm" else {"shape": (1, 1, 4, 4)}
    run = solvers.nested(prior, inner, **options, **given)
    assert solvers.plan(prior, inner, **options) == (run.outer_timesteps, run.inner_timesteps)


@pytest.mark.parametrize("inner, schedule, message", [("ddrm", "matchd", "schedule 'matchd' is not one of"),
                                                       ("ddim", "Paper", "schedule 'Paper' is not one of"),
                                                       ("ddrn", None, "inner sampler 'ddrn' is not one of")])
def test_plan_refuses_what_nested_refuses(prior, inner, schedule, message):
    """plan promises a ValueError whenever nested could not run the request (here: a misspelt name)."""
    with pytest.raises(ValueError, match=message):
        solvers.plan(prior, inner, 3, 10, schedule=schedule)


def test_plan_defaults_to_ddrm_on_the_matched_schedule(prior):
    grids = solvers.matched_inner_timesteps([10, 10, 10])
    assert solvers.plan(prior, outer_steps=3, inner_steps=10) == ([g[0] for g in grids], grids)



def test_generation_on_the_matched_schedule_takes_the_plain_grids_tails(prior):
    """Generation's plain grid is evenly spaced on [0, 999]; the matched runs take its tails as they are
    (7 calls: 999, 832, 666, 500, 333, 166, 0; see test_matched_grids_by_hand)."""
    grids = [[999, 500, 0], [500, 333, 166, 0]]
    assert solvers.plan(prior, "ddim", 2, [3, 4], schedule="matched") == ([999, 500], grids)
