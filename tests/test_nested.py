"""Nested Diffusion: S = 1 is the plain inner sampler, exact NFE accounting and budgets, the outer DDIM
step, human feedback (keep, set_cond), early stop and resume, schedules, and posterior statistics."""
import pytest
import torch

import degradations
import solvers
from _toy_ops import Recorder, gaussian_problem, random_gaussian_prior


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def prior():
    return random_gaussian_prior((1, 4, 4), generator(0))


@pytest.fixture(scope="module")
def measurement(prior):
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    clean = op.H(prior.sample(3, generator(1)))
    return {"y": clean + 0.1 * torch.randn(clean.shape, generator=generator(2), dtype=torch.float64),
            "op": op, "sigma_y": 0.1}


def x_T(batch=3, seed=3):
    return torch.randn(batch, 1, 4, 4, dtype=torch.float64, generator=generator(seed))


def final(run):
    return list(run)[-1]


@pytest.mark.parametrize("steps", [10, 20])
def test_one_outer_step_is_plain_ddrm(prior, measurement, steps):
    plain = solvers.ddrm(prior, timesteps=solvers.ddrm_timesteps(steps), generator=generator(4), **measurement)
    run = solvers.nested(prior, "ddrm", outer_steps=1, inner_steps=steps, generator=generator(4), **measurement)
    assert torch.equal(final(run).x0, plain)


@pytest.mark.parametrize("inner,plain", [
    ("ddim", lambda m, x, g: solvers.ddim(m, x, solvers.inner_timesteps(999, 8), eta=0.5, generator=g)),
    ("ddpm", lambda m, x, g: solvers.ddpm(m, x, solvers.inner_timesteps(999, 8), generator=g)),
    ("dpm_solver", lambda m, x, g: solvers.dpm_solver(m, x, solvers.dpm_inner_timesteps(999, 8), variant="2S")),
])
def test_one_outer_step_is_the_plain_generation_sampler(prior, inner, plain):
    options = {"ddim": {"eta": 0.5}, "ddpm": {}, "dpm_solver": {"variant": "2S"}}[inner]
    run = solvers.nested(prior, inner, outer_steps=1, inner_steps=8, x_T=x_T(), generator=generator(5), **options)
    assert torch.equal(final(run).x0, plain(prior, x_T(), generator(5)))


def test_nfe_previews_and_grids(prior, measurement):
    model = Recorder(prior)
    run = solvers.nested(model, "ddrm", outer_steps=3, inner_steps=10, generator=generator(), **measurement)
    previews = list(run)
    assert [p.nfe for p in previews] == [10, 20, 30] and len(model.calls) == 30 == run.total_nfe
    assert [p.step for p in previews] == [1, 2, 3]
    assert run.inner_timesteps == solvers.matched_inner_timesteps([10, 10, 10], reach=1.0)  # the default for DDRM
    assert run.outer_timesteps == [900, 450, 297]
    assert [p.t for p in previews] == run.outer_timesteps == [grid[0] for grid in run.inner_timesteps]
    assert run.inner_timesteps[0] == solvers.ddrm_timesteps(10)  # the first run is plain DDRM with 10 calls
    assert [int(t[0]) for t, _ in model.calls] == sum(run.inner_timesteps, [])
    assert run.latest is previews[-1]


def test_paper_schedule_grids(prior, measurement):
    run = solvers.nested(prior, "ddrm", outer_steps=3, inner_steps=10, schedule="paper", **measurement)
    assert run.outer_timesteps == [990, 660, 330]  # DDRM's top for 30 calls
    assert run.inner_timesteps[1] == solvers.inner_timesteps(660, 10)


def test_generation_uses_the_released_outer_grid(prior):
    run = solvers.nested(prior, "ddim", outer_steps=5, inner_steps=4, shape=(2, 1, 4, 4), dtype=torch.float64,
                         generator=generator())
    assert run.outer_timesteps == [999, 799, 599, 400, 200]
    assert run.inner_timesteps[0] == [999, 666, 333, 0]
    preview = final(run)
    assert preview.x0.shape == (2, 1, 4, 4) and preview.x0.dtype == torch.float64


@pytest.mark.parametrize("schedule", ["matched", "paper"])
@pytest.mark.parametrize("budget,marks", [(25, [13, 25]), (7, [7]), (30, [10, 20, 30]), (100, [10, 20, 30])])
def test_budget_is_planned_over_the_runs_that_fit(prior, measurement, budget, marks, schedule):
    model = Recorder(prior)
    run = solvers.nested(model, "ddrm", outer_steps=3, inner_steps=10, budget=budget, generator=generator(),
                         schedule=schedule, **measurement)
    assert [p.nfe for p in run] == marks and len(model.calls) == marks[-1] == run.total_nfe


def test_callback_counts_over_the_whole_run(prior):
    infos = []
    final(solvers.nested(prior, "ddpm", outer_steps=2, inner_steps=3, x_T=x_T(), generator=generator(),
                         callback=infos.append))
    assert [i["nfe"] for i in infos] == [1, 2, 3, 4, 5, 6] and [i["step"] for i in infos] == [1, 1, 1, 2, 2, 2]


def test_outer_step_is_ddim_from_the_inner_result(prior):
    previews = list(solvers.nested(prior, "ddim", outer_steps=3, inner_steps=4, x_T=x_T()))
    for before, after in zip(previews, previews[1:]):
        a, a_next = prior.alphas_cumprod[before.t], prior.alphas_cumprod[after.t]
        eps = (before.x - a.sqrt() * before.x0) / (1 - a).sqrt()
        torch.testing.assert_close(after.x, a_next.sqrt() * before.x0 + (1 - a_next).sqrt() * eps, rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("schedule,top", [("matched", 900), ("paper", 950)])  # plain 10 calls; DDRM's top for 20
def test_first_ddrm_state_is_the_y_aware_initialisation(prior, measurement, schedule, top):
    run = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=10, generator=generator(6), schedule=schedule,
                         **measurement)
    expected = solvers.ddrm_init(prior, measurement["y"], measurement["op"], 0.1, top, generator=generator(6))
    assert torch.equal(next(run).x, expected)


def test_keep_replicates_the_chosen_candidates(prior):
    reference = list(solvers.nested(prior, "ddim", outer_steps=3, inner_steps=4, x_T=x_T(4)))
    kept = list(solvers.nested(prior, "ddim", outer_steps=3, inner_steps=4, x_T=x_T(4),
                               hook=lambda preview, run: run.keep([2, 0]) if preview.step == 1 else None))
    torch.testing.assert_close(kept[1].x, reference[1].x[[2, 0, 2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(kept[1].x0, reference[1].x0[[2, 0, 2, 0]], rtol=0, atol=0)


def test_keep_replicates_y_for_ddrm(prior, measurement):
    run = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=5, noise=torch.zeros, **measurement)
    next(run)
    run.keep(1)
    last = next(run).x0
    torch.testing.assert_close(last, last[[0, 0, 0]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="candidate"):
        run.keep([3])


def test_set_cond_changes_only_later_inner_runs(prior):
    model = Recorder(prior)
    run = solvers.nested(model, "ddim", outer_steps=3, inner_steps=2, x_T=x_T(), cond="cat")
    for preview in run:
        if preview.step == 1:
            run.set_cond("dog")
    assert [cond for _, cond in model.calls] == ["cat", "cat", "dog", "dog", "dog", "dog"]


def test_break_is_an_early_stop_and_iterating_again_resumes(prior):
    run = solvers.nested(prior, "ddim", outer_steps=3, inner_steps=2, x_T=x_T())
    for _ in run:
        break
    assert run.latest.step == 1 and run.nfe == 2
    assert [p.step for p in run] == [2, 3]


def test_inner_schedules_and_lists(prior, measurement):
    front = solvers.nested(prior, "ddrm", outer_steps=3, inner_steps=10, inner_schedule="front", schedule="paper",
                           **measurement)
    assert [len(g) for g in front.inner_timesteps] == [15, 10, 5] and front.outer_timesteps == [990, 660, 330]
    matched = solvers.nested(prior, "ddrm", outer_steps=3, inner_steps=10, inner_schedule="back", **measurement)
    assert matched.inner_timesteps == solvers.matched_inner_timesteps([5, 10, 15], reach=1.0)
    listed = solvers.nested(prior, "ddim", outer_steps=2, inner_steps=[3, 1], x_T=x_T())
    assert [p.nfe for p in listed] == [3, 4] and listed.inner_timesteps[1] == [listed.outer_timesteps[1]]


def test_outer_timesteps_override(prior):
    run = solvers.nested(prior, "dpm_solver", inner_steps=3, outer_timesteps=[800, 300], x_T=x_T())
    assert [p.t for p in run] == [800, 300] and run.inner_timesteps[1] == solvers.dpm_inner_timesteps(300, 3)


def test_nested_ddrm_sample_mean_approaches_the_exact_posterior_mean():
    """The setting of plain DDRM's test in test_solvers_ddrm (sr2, σ_y = 0.05), 2 × 125 calls: like DDRM,
    the bias is set by the step size near t = 0, here that of the last inner run."""
    prior, op, y = gaussian_problem("sr2", 0.05)
    draws = final(solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=125, generator=generator(9),
                                 y=y.expand(800, -1, -1, -1), op=op, sigma_y=0.05)).x0
    z = (draws.mean(0) - prior.posterior(y, op, 0.05).mean[0]) / (draws.std(0) / 800**0.5)
    assert z.abs().max() < 4


def test_bad_arguments_raise_value_error(prior, measurement):
    cases = [
        (dict(inner="ddrm2", outer_steps=2, inner_steps=2), "inner sampler"),
        (dict(inner="ddrm", outer_steps=2, inner_steps=2), "needs y"),
        (dict(inner="ddim", outer_steps=2, inner_steps=2, x_T=x_T(), sigma_y=0.1), "not an option"),
        (dict(inner="ddim", outer_steps=2, inner_steps=[2, 2], x_T=x_T(), inner_schedule="front"), "inner_schedule"),
        (dict(inner="ddim", outer_steps=3, inner_steps=2, x_T=x_T(), outer_timesteps=[900, 100]), "outer_steps"),
        (dict(inner="ddim", outer_steps=2, inner_steps=2, x_T=x_T(), budget=0), "budget"),
        (dict(inner="ddim", outer_steps=2, inner_steps=2, x_T=x_T(), schedule="front"), "schedule"),
        (dict(inner="ddim", outer_steps=2, inner_steps=2), "x_T or shape"),
        (dict(inner="ddim", inner_steps=2, x_T=x_T()), "outer_steps"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            solvers.nested(prior, **kwargs)
    run = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=2, **measurement)
    with pytest.raises(ValueError, match="after the first outer step"):
        run.keep([0])


# Edges of the plan: a schedule that is not 1000 steps long, a budget of one call, broken custom grids.

class ShortSchedule:
    """ε-model of N(0, I) on a 500-step linear schedule."""

    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.04, 500, dtype=torch.float64), 0)

    def __call__(self, x, t):
        return (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * x


def test_ddrm_top_time_follows_the_models_schedule_length():
    """10 calls on 500 steps: DDRM's rule skip = 500 // 10 = 50 puts the top at 450, and the outer grid
    splits [0, 450] (not the 900 of a 1000-step schedule)."""
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    y = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    run = solvers.nested(ShortSchedule(), "ddrm", outer_steps=2, inner_steps=5, y=y, op=op, sigma_y=0.1, schedule="paper")
    assert run.outer_timesteps == [450, 225]
    assert [p.nfe for p in run] == [5, 10]


def test_matched_grids_follow_the_models_schedule_length():
    """5 + 5 calls on 500 steps: plain DDRM's grids for 5 and 10 calls (skips 100, 50), 400…0 and the
    tail 200…0 (not 800…0 and 400…0 of a 1000-step schedule)."""
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    y = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    run = solvers.nested(ShortSchedule(), "ddrm", outer_steps=2, inner_steps=5, y=y, op=op, sigma_y=0.1)
    assert run.inner_timesteps == [[400, 300, 200, 100, 0], [200, 150, 100, 50, 0]]


def test_a_custom_inner_grid_replaces_the_matched_grids_from_their_outer_times(prior, measurement):
    """Matched outer times for 5 + 5 calls are 800 and 400; the custom grid halves the rest of each run."""
    def halving(t, count):
        return [t] + solvers.inner_timesteps(t // 2, count - 1)

    run = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=5, inner_grid=halving, **measurement)
    assert run.inner_timesteps == [[800, 400, 267, 133, 0], [400, 200, 133, 67, 0]]


def test_a_budget_of_one_call_gives_one_preview():
    prior = random_gaussian_prior((1, 2, 2), torch.Generator().manual_seed(0))
    x_T = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    previews = list(solvers.nested(prior, "ddim", outer_steps=3, inner_steps=4, x_T=x_T, budget=1))
    assert [(p.step, p.nfe) for p in previews] == [(1, 1)]


@pytest.mark.parametrize("grid", [lambda t, n: [t - 10 * i for i in range(n + 1)],   # one point too many
                                  lambda t, n: [t - 1 - 10 * i for i in range(n)]])  # does not start at t
def test_inner_grids_must_start_at_the_outer_time_with_the_planned_length(grid):
    prior = random_gaussian_prior((1, 2, 2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="inner grid at outer time 900 must start at 900 with 3 points"):
        solvers.nested(prior, "ddim", outer_timesteps=[900, 400], inner_steps=3, x_T=torch.zeros(1, 1, 2, 2),
                       inner_grid=grid)


@pytest.mark.parametrize("counts", [[2, 2, 2], [2, 0]])
def test_a_list_of_inner_steps_needs_one_positive_count_per_outer_step(prior, counts):
    with pytest.raises(ValueError, match=r"must give one count ≥ 1 for each of the 2 outer steps"):
        solvers.nested(prior, "ddim", outer_steps=2, inner_steps=counts, x_T=x_T())
