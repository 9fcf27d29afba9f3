"""DPS's step schedules by hand (the "beta" schedule is the published ζ on the 1000-step grid), and its
options reaching nested runs."""
import pytest
import torch

import solvers
from _toy_ops import dps_step_by_hand, gaussian_problem

F64 = torch.float64
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)  # the schedule of gaussian_problem's prior


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def one_step_by_hand(t, t_next, zeta):
    """(DPS's x after one step from x_t at t to t' with the guidance weight ζ, computed by hand
    (`dps_step_by_hand`), and the run's x as a function of dps's options)."""
    (prior, op, y), x_t, z, unguided, grad, _ = dps_step_by_hand(t, t_next)
    return unguided - zeta * grad, lambda **options: _second_state(prior, y, op, [t, t_next], x_t, z, **options)


def _second_state(prior, y, op, grid, x_t, z, **options):
    infos = []
    solvers.dps(prior, y, op, grid, x_T=x_t.reshape(1, 1, 4, 4), noise=lambda shape: z, callback=infos.append,
                clip_x0=False, **options)
    return infos[1]["x"].reshape(-1)


def test_beta_schedule_scales_zeta_by_the_steps_beta_over_the_schedules_beta():
    """From t = 600 to 350: ζ_t = ζ (1 − ∏_{s=351}^{600} (1 − β_s)) / β_600, with the linear β by hand."""
    factor = (1 - torch.prod(1 - BETAS[351:601])) / BETAS[600]
    assert 50 < factor < 250  # at most the 250 training steps the jump spans: fewer as ᾱ_t/ᾱ_{t'} saturates
    expected, run = one_step_by_hand(600, 350, 0.7 * factor)
    torch.testing.assert_close(run(step_size=0.7, step_schedule="beta"), expected, rtol=1e-10, atol=1e-10)
    expected, run = one_step_by_hand(600, 350, 0.7)
    torch.testing.assert_close(run(step_size=0.7), expected, rtol=1e-10, atol=1e-10)  # "constant", the default


@pytest.mark.parametrize("t", [600, 1])
def test_beta_schedule_is_the_published_zeta_on_consecutive_steps(t):
    expected, run = one_step_by_hand(t, t - 1, 0.7)
    torch.testing.assert_close(run(step_size=0.7, step_schedule="beta"), expected, rtol=1e-10, atol=1e-10)


def test_beta_schedule_equals_constant_on_the_whole_1000_step_grid():
    """The last step too (t = 0 to ᾱ = 1, whose β is β_0): every factor is 1, so the runs agree."""
    prior, op, y = gaussian_problem("sr2", 0.1)
    grid = list(range(999, -1, -1))
    x_T = torch.randn(1, 1, 4, 4, generator=generator(5), dtype=F64)
    runs = [solvers.dps(prior, y, op, grid, step_size=0.4, x_T=x_T, generator=generator(6), step_schedule=schedule)
            for schedule in ("constant", "beta")]
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-12, atol=1e-12)


def test_bad_step_schedule_is_refused_in_one_line():
    prior, op, y = gaussian_problem("sr2", 0.1)
    with pytest.raises(ValueError, match="step_schedule 'alpha' is not one of constant, beta"):
        solvers.dps(prior, y, op, [10, 0], step_schedule="alpha")


@pytest.mark.parametrize("options", [{"step_schedule": "beta", "step_size": 0.05}, {"clip_x0": False}])
def test_nested_passes_the_options_to_its_dps_runs(options):
    """One outer step of the matched schedule is the plain 10-call run, same grid and draws."""
    prior, op, y = gaussian_problem("sr2", 0.1)
    y = y * 8  # a measurement far outside [−1, 1], so that the clamp matters
    run = solvers.nested(prior, "dps", outer_steps=1, inner_steps=10, generator=generator(7), y=y, forward=op,
                         **options)
    (preview,) = list(run)
    grid = solvers.plain_ddrm_timesteps(10, 1000)
    plain = solvers.dps(prior, y, op, grid, generator=generator(7), **options)
    default = solvers.dps(prior, y, op, grid, generator=generator(7))
    torch.testing.assert_close(preview.x0, plain, rtol=1e-12, atol=1e-12)
    assert (plain - default).abs().max() > 1e-3


# --- `ipsolve restore`: the flags and the per-task defaults reach solvers.dps -----------------------------------

def restore_options(monkeypatch, tmp_path, *flags, vanilla=True):
    """The keyword options solvers.dps got from `ipsolve restore example:sr4 --solver dps FLAGS` (one call),
    and run.json."""
    import importlib
    import json

    from ipsolve.cli import main

    seen = []

    def recording_dps(model, **kwargs):
        seen.append({k: kwargs[k] for k in ("step_size", "clip_x0", "step_schedule") if k in kwargs})
        return kwargs["x_T"] if "x_T" in kwargs else torch.zeros(1, 1, 32, 32)

    monkeypatch.setattr(solvers, "dps", recording_dps)
    monkeypatch.setitem(importlib.import_module("solvers.nested").INNER_SAMPLERS, "dps", recording_dps)
    monkeypatch.chdir(tmp_path)
    mode = ["--vanilla"] if vanilla else []
    code = main(["restore", "example:sr4", "--solver", "dps", *mode, "--outer", "1", "--inner", "2", "--quiet",
                 "--out", "run", *flags])
    assert code == 0
    return seen[0], json.loads((tmp_path / "run" / "run.json").read_text())


@pytest.mark.parametrize("vanilla", [True, False])
def test_restore_gives_dps_its_tuned_sr4_defaults(monkeypatch, tmp_path, vanilla):
    options, record = restore_options(monkeypatch, tmp_path, vanilla=vanilla)
    assert options == {"step_schedule": "beta", "step_size": 0.3, "clip_x0": True}  # docs/solvers_benchmark.md
    assert record["solver_options"] == options
    assert record["arguments"]["step_schedule"] is None and record["arguments"]["clip_x0"] is None


@pytest.mark.parametrize("vanilla", [True, False])
def test_restore_flags_reach_dps_and_run_json(monkeypatch, tmp_path, vanilla):
    options, record = restore_options(monkeypatch, tmp_path, "--step-schedule", "beta", "--step-size", "0.3",
                                      "--no-clip-x0", vanilla=vanilla)
    assert options == {"step_schedule": "beta", "step_size": 0.3, "clip_x0": False}
    assert (record["arguments"]["step_schedule"], record["arguments"]["step_size"],
            record["arguments"]["clip_x0"]) == ("beta", 0.3, False)


@pytest.mark.parametrize("task, step_size", [("deno", 0.2), ("sr4", 0.3), ("sr16", 0.3), ("sr_bicubic4", 0.3),
                                             ("inp", 0.2), ("inp_mask", 0.2), ("inp_box", 0.2), ("color", 0.2),
                                             ("deblur_gauss+inp", 0.2), ("saturate", 0.2)])
def test_restore_defaults_of_dps_per_task_family(task, step_size):
    from ipsolve.config import restore_defaults

    assert restore_defaults("dps", task) == {"step_schedule": "beta", "step_size": step_size, "clip_x0": True}
    assert restore_defaults("ddrm", task) == {} and restore_defaults("pigdm", task, {"eta": 0.5}) == {"eta": 0.5}


def test_the_constant_schedule_without_a_step_size_is_the_published_zeta(monkeypatch, tmp_path):
    options, _ = restore_options(monkeypatch, tmp_path, "--step-schedule", "constant", "--clip-x0")
    assert options == {"step_schedule": "constant", "clip_x0": True}  # ζ: solvers.dps's own default, 1.0


def test_dps_flags_are_refused_for_another_solver(tmp_path, capsys):
    from ipsolve.cli import main

    code = main(["restore", "example:sr4", "--solver", "ddrm", "--no-clip-x0", "--quiet", "--out", str(tmp_path / "r")])
    assert code == 2 and "--solver ddrm takes no --clip-x0" in capsys.readouterr().err


def test_eval_configs_take_the_dps_options_with_their_types(tmp_path):
    from ipsolve.config import load_eval_config

    path = tmp_path / "dps.yml"
    path.write_text("model: embedded\ntasks: [deno]\nbudgets: [10]\nmethods:\n"
                    "  dps: {step_schedule: beta, step_size: 0.2, clip_x0: false}\n  nested_dps: {solver: dps, "
                    "inner_steps: 5}\n")
    plain, nested = load_eval_config(path).methods
    assert plain.options == {"step_size": 0.2, "clip_x0": False, "step_schedule": "beta"}
    assert nested.options == {"step_size": 1.0, "clip_x0": True, "step_schedule": "constant"}  # solvers.dps's own
    path.write_text(path.read_text().replace("clip_x0: false", "clip_x0: 0.5"))
    with pytest.raises(ValueError, match=r"methods\.dps\.clip_x0 must be true or false, got 0\.5"):
        load_eval_config(path)
    path.write_text(path.read_text().replace("clip_x0: 0.5", "clip_x0: true").replace("beta,", "betas,"))
    with pytest.raises(ValueError, match=r"methods\.dps\.step_schedule must be one of constant, beta, got 'betas'"):
        load_eval_config(path)
