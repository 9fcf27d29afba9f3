"""Divergence is detected where it happens: a solver whose state or x̂₀ stops being finite stops at that call
with SolverDiverged (one line: the solver, the call, t, a remedy), and every front-end shows that line, never
the input check's "contains NaN values"; a finite run is unchanged, and bad inputs stay input errors."""
import csv
import json
import re
import shutil

import pytest
import torch

import degradations
import solvers
from _toy_ops import linear_alphas_cumprod
from ipsolve.cli import main
from ipsolve.models.priors import IsotropicGaussianPrior
from solvers import SolverDiverged
from test_cli import EXAMPLES, ipsolve_run, previews_in

SHAPE = (1, 4, 4)
GRID = [900, 700, 500, 300, 100]
SOLVERS = ("ddrm", "ddnm", "pigdm", "dps", "ddim", "ddpm", "dpm_solver")


class Poisoned:
    """The exact ε-model of N(0, `variance` I) data, except that call number `at` (from 1; 0: none) adds
    `value` to ε̂."""

    def __init__(self, at, value=float("nan"), shape=SHAPE, variance=1.0):
        self.prior = IsotropicGaussianPrior(torch.zeros(shape), variance, linear_alphas_cumprod())
        self.alphas_cumprod = self.prior.alphas_cumprod
        self.at, self.value, self.calls = at, value, 0

    def __call__(self, x, t):
        self.calls += 1
        eps = self.prior(x, t)
        return eps + self.value if self.calls == self.at else eps


def gen(seed):
    return torch.Generator().manual_seed(seed)


def problem(dtype=torch.float64):
    """(y, op, x_T): a 4×4 inpainting measurement of a standard normal draw and a start."""
    op = degradations.make("inp", channels=1, image_size=SHAPE[1:], seed=0)
    return (op.H(torch.randn(1, *SHAPE, generator=gen(1), dtype=dtype)), op,
            torch.randn(1, *SHAPE, generator=gen(2), dtype=dtype))


def run(name, model, grid=GRID, callback=None, function=None, **options):
    """Solver `name` (or `function`, its undecorated body) on `problem()` with seeded draws."""
    y, op, x_T = problem()
    solve = function or getattr(solvers, name)
    common = dict(timesteps=grid, x_T=x_T, generator=gen(3), callback=callback, **options)
    if name in ("ddrm", "ddnm", "pigdm"):
        return solve(model, y=y, op=op, sigma_y=0.1, **common)
    if name == "dps":
        return solve(model, y=y, forward=op, **common)
    return solve(model, **common)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", SOLVERS)
def test_each_solver_stops_at_the_call_whose_x0_is_not_finite(name, value):
    model, seen = Poisoned(at=3, value=value), []
    with pytest.raises(SolverDiverged) as caught:
        run(name, model, callback=lambda info: seen.append((info["nfe"], info["t"])))
    line = str(caught.value)
    assert line.startswith(f"{name} diverged at call 3 (t = 500): x̂₀ is not finite; ") and "\n" not in line
    assert (caught.value.solver, caught.value.call, caught.value.t) == (name, 3, 500)
    assert model.calls == 3 and seen == [(1, 900), (2, 700)]  # stopped there; the bad x̂₀ was never handed out


def test_ddnm_counts_model_calls_not_grid_points_on_a_time_travel_grid():
    """900 →(call 1) 700, back up to 900 without a call, 900 →(call 2) 700 →(call 3) 500 → …"""
    model = Poisoned(at=3)
    with pytest.raises(SolverDiverged, match=r"^ddnm diverged at call 3 \(t = 700\)"):
        run("ddnm", model, grid=[900, 700, 900, 700, 500])
    assert model.calls == 3


def test_pigdm_without_its_safeguard_diverges_and_is_told_to_turn_it_on():
    """Data with variance far above 1 (the case the safeguard is for): the score weight's step overshoots
    until the float32 state overflows; the message names the first call whose state is not finite. With
    its default safeguard (on for the score weight) the same run stays finite."""
    model = Poisoned(at=0, shape=(1, 8, 8), variance=1e6)
    op = degradations.make("inp", channels=1, image_size=(8, 8), seed=0)
    y, grid = op.H(torch.randn(1, 1, 8, 8, generator=gen(0))), solvers.ddrm_timesteps(50)
    seen = []

    def watch(info):
        seen.append(bool(torch.isfinite(info["x"]).all() and torch.isfinite(info["x0"]).all()))

    with pytest.raises(SolverDiverged) as caught:
        solvers.pigdm(model, y, op, 0.0, grid, generator=gen(0), weight="score", safeguard=False, callback=watch)
    call = len(seen) + 1
    assert all(seen) and caught.value.call == call and caught.value.t == grid[call - 1] < grid[0]
    assert str(caught.value).endswith("is not finite; turn the safeguard on (safeguard=True)")
    assert torch.isfinite(solvers.pigdm(model, y, op, 0.0, grid, generator=gen(0), weight="score")).all()


@pytest.mark.parametrize("options, advice", [
    ({"weight": "code", "safeguard": None}, "turn the safeguard on"), ({"weight": "code", "safeguard": True}, None),
    ({"weight": "paper", "safeguard": None}, 'use weight="code"'), ({"weight": "score", "safeguard": True},
                                                                    'use weight="code"'),
    ({"weight": "score", "safeguard": False}, "turn the safeguard on"),
    ({"weight": "code", "safeguard": False}, "turn the safeguard on")])
def test_pigdm_remedy_follows_its_weight_and_safeguard(options, advice):
    """The advice after a divergence: the safeguard when it was off (explicitly, or by the "code" weight's
    default), else the released weight when another was used, else the generic advice (None)."""
    from solvers.pigdm import remedy

    said = remedy(options)
    assert said is None if advice is None else said.startswith(advice)


def test_a_dps_step_too_large_for_the_dtype_is_caught_in_the_result_of_the_last_step():
    y, op, _ = problem(torch.float32)
    with pytest.raises(SolverDiverged) as caught:
        solvers.dps(Poisoned(at=0), y, op, [500], step_size=1e39, generator=gen(0))
    assert str(caught.value) == ("dps diverged at call 1 (t = 500): the result of its last step is not finite; "
                                 "lower the step size (it is 1e+39)")
    assert torch.isfinite(solvers.dps(Poisoned(at=0), y, op, [500], generator=gen(0))).all()


class NaNGradient(Poisoned):
    """Finite ε̂ at every call, but call `at` has a NaN gradient (0·√(0·x) adds 0; its derivative is 0·∞·0)."""

    def __call__(self, x, t):
        self.calls += 1
        eps = self.prior(x, t)
        return eps + 0 * (0 * x).sqrt() if self.calls == self.at else eps


@pytest.mark.parametrize("safeguard, says", [
    (True, "call 3 (t = 500): the tensor it handed the operator after that call"),  # its step needs H(correction)
    (False, "call 4 (t = 300): the state x_t")])
def test_pigdm_guidance_gone_nan_is_a_divergence_not_an_invalid_input(safeguard, says):
    with pytest.raises(SolverDiverged) as caught:
        run("pigdm", NaNGradient(at=3), safeguard=safeguard)
    assert str(caught.value).startswith(f"pigdm diverged at {says} is not finite; ")


@pytest.mark.parametrize("name", SOLVERS)
def test_a_finite_run_is_unchanged_bit_for_bit(name):
    """The checked solver returns exactly what its body returns and hands the callback the same calls."""
    checked, body = [], []
    ours = run(name, Poisoned(at=0), callback=lambda info: checked.append(info["x0"]))
    theirs = run(name, Poisoned(at=0), callback=lambda info: body.append(info["x0"]),
                 function=getattr(solvers, name).__wrapped__)
    assert torch.equal(ours, theirs) and len(checked) == len(body) == len(GRID)
    assert all(torch.equal(a, b) for a, b in zip(checked, body))


@pytest.mark.parametrize("name, what", [("dps", "y"), ("pigdm", "y"), ("ddim", "x_T"), ("ddrm", "x_T")])
def test_an_input_that_is_not_finite_is_an_input_error_not_a_divergence(name, what):
    y, op, x_T = problem()
    bad = {"y": y.clone(), "x_T": x_T.clone()}
    bad[what].view(-1)[0] = float("nan")
    solve = getattr(solvers, name)
    with pytest.raises(ValueError, match="contains NaN or infinite values; check the input") as caught:
        if name == "ddim":
            solve(Poisoned(at=0), bad["x_T"], GRID)
        elif name == "dps":
            solve(Poisoned(at=0), bad["y"], op, GRID, x_T=bad["x_T"])
        else:
            solve(Poisoned(at=0), bad["y"], op, 0.1, GRID, x_T=bad["x_T"])
    assert not isinstance(caught.value, SolverDiverged)


def test_nested_names_the_call_over_the_whole_run_and_the_outer_step_and_keeps_earlier_previews():
    y, op, _ = problem()
    nested = solvers.nested(Poisoned(at=7), "ddrm", outer_steps=3, inner_steps=3, y=y, op=op, sigma_y=0.1,
                            generator=gen(0))
    previews = []
    with pytest.raises(SolverDiverged) as caught:
        for preview in nested:
            previews.append(preview)
    t = nested.inner_timesteps[2][0]  # call 7 is the first call of the third inner run
    assert str(caught.value).startswith(f"nested ddrm diverged at call 7 (outer step 3, t = {t}): x̂₀ is not finite")
    assert [p.nfe for p in previews] == [3, 6] and all(torch.isfinite(p.x0).all() for p in previews)


def test_nested_checks_its_outer_step():
    """A noise source gone bad reaches only the outer step here (inner DDIM with η = 0 draws nothing)."""
    x_T = torch.randn(1, *SHAPE, generator=gen(0), dtype=torch.float64)
    nested = solvers.nested(Poisoned(at=0), "ddim", outer_steps=2, inner_steps=2, x_T=x_T, eta_outer=1.0,
                            noise=lambda shape: torch.full(shape, float("inf")))
    first = next(nested)
    with pytest.raises(SolverDiverged) as caught:
        next(nested)
    t, t_next = nested.outer_timesteps
    assert str(caught.value).startswith(f"nested ddim diverged at call 2 (outer step 1, t = {t}): the outer step's "
                                        f"state at t = {t_next} is not finite")
    assert first.nfe == 2 and torch.isfinite(first.x0).all()


# --------------------------------------------------------------------------- the front-ends

LINE = r"(nested )?dps diverged at call \d+ \((outer step \d+, )?t = \d+\): .+ is not finite; lower the step size " \
       r"\(it is 1e\+30\)"


@pytest.fixture
def measurements(tmp_path):
    """The shipped inpainted digit (with its sidecar and mask) in a folder of its own."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("digit_inp.png", "digit_inp.png.json", "digit_inp.mask.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


@pytest.mark.parametrize("mode", [[], ["--vanilla"]], ids=["nested", "vanilla"])
def test_restore_exits_2_with_the_line_records_it_and_keeps_the_previews(measurements, mode):
    done = ipsolve_run("restore", "in/digit_inp.png", "--solver", "dps", "--step-size", "1e30", "--outer", 4,
                       "--inner", 1, *mode, "--quiet", "--out", "run", cwd=measurements.parent)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "contains NaN" not in done.stderr, done.stderr
    assert re.fullmatch(f"ipsolve: error: {LINE}", lines[0]), lines[0]
    out = measurements.parent / "run"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == lines[0].removeprefix("ipsolve: error: ")
    kept = previews_in(out)
    assert kept and [p["file"] for p in record["previews"]] == [p.name for p in kept]


def test_a_folder_restore_records_the_line_as_the_item_failure(measurements):
    done = ipsolve_run("restore", "in", "--solver", "dps", "--step-size", "1e30", "--outer", 4, "--inner", 1,
                       "--quiet", "--out", "run", cwd=measurements.parent)
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stderr  # issue 19: some failed → 1
    assert done.stderr == "ipsolve: 1 of 1 measurements failed: run/index.csv says why\n"
    out = measurements.parent / "run"
    with open(out / "index.csv") as index:
        (row,) = csv.DictReader(index)
    assert re.fullmatch(f"failed: {LINE}", row["status"]), row["status"]
    assert json.loads((out / "digit_inp" / "run.json").read_text())["error"] == row["status"].removeprefix("failed: ")


def test_eval_shows_the_line(tmp_path, capsys):
    import yaml

    from ipsolve.imageio import save_image

    (tmp_path / "data").mkdir()
    save_image(torch.rand(1, 32, 32, generator=gen(0)), tmp_path / "data" / "a.png")
    config = {"model": "embedded", "seed": 0, "batch_size": 1, "tasks": ["inp"], "budgets": [2],
              "methods": {"dps": {"step_size": 1e30}}, "metrics": {"lpips": None, "fid": None}}
    (tmp_path / "eval.yml").write_text(yaml.safe_dump(config))
    code = main(["eval", "--config", str(tmp_path / "eval.yml"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--no-fid"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.fullmatch(f"ipsolve: error: {LINE}", lines[0]), lines


def poisoned_embedded(at):
    """The embedded model, except that its call number `at` returns NaN."""
    from ipsolve.models import load_model

    model, calls = load_model("embedded"), [0]
    forward = model.forward

    def poisoned(x, t, *rest):
        calls[0] += 1
        eps = forward(x, t, *rest)
        return eps + float("nan") if calls[0] == at else eps

    model.forward = poisoned
    return model


def test_generate_exits_2_with_the_line_and_keeps_the_previews(tmp_path, monkeypatch, capsys):
    import ipsolve.models

    model = poisoned_embedded(at=2)
    monkeypatch.setattr(ipsolve.models, "load_model", lambda name, **kwargs: model)
    code = main(["generate", "--model", "embedded", "--outer", "2", "--inner", "1", "--n", "1", "--quiet",
                 "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(r"ipsolve: error: nested \w+ diverged at call 2 \(outer step 2, t = \d+\): x̂₀ is not "
                        r"finite; .+", lines[0]), lines[0]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == lines[0].removeprefix("ipsolve: error: ")
    assert [p.name for p in previews_in(tmp_path / "run")] == [p["file"] for p in record["previews"]] != []


def test_the_studio_shows_the_line(tmp_path):
    from ipsolve.studio.events import RestoreForm, Studio, prepare_restore

    studio = Studio(["embedded"], tmp_path / "runs", loaded={"embedded": poisoned_embedded(at=3)})
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=2, inner=2))
    last = list(job.views(studio))[-1]
    assert re.fullmatch(r"error: nested ddrm diverged at call 3 \(outer step 2, t = \d+\): x̂₀ is not finite; .+",
                        last.status), last.status
    assert len(last.strip) == 1  # the first preview stays on the page
