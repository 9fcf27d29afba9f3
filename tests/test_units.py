"""Noise levels in the right units on every path: `ipsolve degrade`, `ipsolve restore --sigma-y` and eval.

Users give σ in [0, 1] pixel units; the solvers work in model units ([−1, 1] images), twice that. Each
test checks an observable against a number the test computes itself (2 × the pixel value), and would
fail with the pixel value, with 4× it, or with no noise at all. The commands run in-process (`main`).
"""
import math
from types import SimpleNamespace

import pytest
import torch

import degradations
import solvers
from ipsolve.cli import main
from ipsolve.config import MethodConfig, TaskConfig
from ipsolve.imageio import from_model, load_image, save_image, to_model
from ipsolve.measurement import read_measurement
from ipsolve.models import load_model
from ipsolve.restore import restore
from ipsolve.services.evaluation import Run, solve


def generator(seed):
    return torch.Generator().manual_seed(seed)


def test_task_config_model_units_are_twice_the_pixel_units():
    task = TaskConfig.from_dict({"name": "deno", "operator": "deno", "sigma_y_pixel": 0.05})
    assert task.sigma_y_pixel == 0.05 and task.sigma_y_model == pytest.approx(0.1, abs=1e-15)
    assert task.as_dict()["sigma_y_model"] == pytest.approx(0.1, abs=1e-15)
    assert TaskConfig.from_dict({"operator": "sr4"}).sigma_y_model == 0.0


def test_degrade_command_adds_noise_of_the_pixel_sigma_to_the_image(tmp_path):
    """A flat mid-gray 256×256 image never clips at σ = 0.05, so y − x is the noise itself (plus 8-bit
    rounding, std 0.0011): its std is 0.05 within 2 % (about 7 standard errors)."""
    save_image(torch.full((1, 256, 256), 0.5), tmp_path / "gray.png")
    x = load_image(tmp_path / "gray.png")  # 128/255
    assert main(["degrade", str(tmp_path / "gray.png"), "--task", "deno", "--sigma-y", "0.05", "--seed", "1",
                 "-o", str(tmp_path / "y.png")]) == 0
    noise = load_image(tmp_path / "y.png") - x
    assert noise.mean().abs() < 0.001
    assert noise.std().item() == pytest.approx(math.hypot(0.05, 1 / 255 / math.sqrt(12)), rel=0.02)
    assert read_measurement(tmp_path / "y.png").sigma_y == pytest.approx(0.1)  # the sidecar, in model units


def test_degrade_command_equals_the_library_with_twice_the_sigma(tmp_path):
    image = torch.rand(1, 32, 32, generator=generator(0))
    save_image(image, tmp_path / "x.png")
    clean = load_image(tmp_path / "x.png")
    assert main(["degrade", str(tmp_path / "x.png"), "--task", "sr4", "--sigma-y", "0.05", "--seed", "3",
                 "-o", str(tmp_path / "y.png")]) == 0
    written = load_image(tmp_path / "y.png")
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    noise = torch.randn(1, 1, 8, 8, generator=generator(3))  # `seed` draws the noise of H x
    for sigma_model, close in ((0.1, True), (0.05, False), (0.0, False)):
        y = op.H(to_model(clean)[None]) + sigma_model * noise
        expected = (from_model(y[0]).clamp(0, 1) * 255).round() / 255
        assert (written - expected).abs().max().item() <= (1.01 / 255 if close else 10), sigma_model
        if not close:
            assert (written - expected).abs().max().item() > 3 / 255


def test_restore_command_converts_sigma_y_to_model_units(tmp_path):
    """`restore --sigma-y 0.4` on a plain image equals the library's restore with σ_y = 0.8 (model
    units) and the same seed, and differs visibly from σ_y = 0.4 and 1.6."""
    image = 0.5 + 0.3 * torch.randn(1, 8, 8, generator=generator(1))
    save_image(image.clamp(0, 1), tmp_path / "noisy.png")
    assert main(["restore", str(tmp_path / "noisy.png"), "--task", "deno", "--sigma-y", "0.4",
                 "--model", "gaussian:1x8x8", "--outer", "2", "--inner", "3", "--seed", "4", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    final = load_image(tmp_path / "out" / "final.png")
    model = load_model("gaussian:1x8x8")
    op = degradations.make("deno", channels=1, image_size=(8, 8))
    y = to_model(load_image(tmp_path / "noisy.png"))[None]
    for sigma_model, close in ((0.8, True), (0.4, False), (1.6, False)):
        x0 = restore(SimpleNamespace(y=y, op=op, sigma_y=sigma_model), model, 2, 3, generator=generator(4))[-1].x0
        expected = (from_model(x0[0]).clamp(0, 1) * 255).round() / 255
        gap = (final - expected).abs().max().item()
        assert gap <= 1.01 / 255 if close else gap > 8 / 255, (sigma_model, gap)


def image_noise(generators):
    """noise(shape): row b from generators[b] (the evaluation's per-image draws)."""
    return lambda shape: torch.stack([torch.randn(shape[1:], generator=g) for g in generators])


@pytest.fixture(scope="module")
def eval_case():
    model = load_model("gaussian:1x8x8")
    clean = torch.rand(2, 1, 8, 8, generator=generator(5))
    op = degradations.make("sr2", channels=1, image_size=(8, 8))
    return model, clean, op


def evaluation_draws():
    return [generator(11), generator(12)]


def by_hand(model, clean, op, sigma_model, run_solver):
    """y = H(2x − 1) + σ n with n the first draws of each image's generator, then the solver on the rest."""
    generators = evaluation_draws()
    noise = image_noise(generators)
    y = op.H(to_model(clean))
    y = y + sigma_model * noise(tuple(y.shape))
    return run_solver(y, noise)


def test_eval_measures_and_solves_in_model_units(eval_case):
    model, clean, op = eval_case
    task = TaskConfig(name="sr2", operator="sr2", sigma_y_pixel=0.1)
    method = MethodConfig("ddrm", options={"eta": 0.7, "eta_b": 0.9})
    result, _ = solve(model, Run(task, method, (4,)), clean, op, evaluation_draws())
    (x0, nfe), = result.values()
    assert list(result) == [4] and nfe == 4
    for sigma_model, close in ((0.2, True), (0.1, False)):
        expected = by_hand(model, clean, op, sigma_model, lambda y, noise: solvers.ddrm(
            model, y, op, sigma_model, solvers.ddrm_timesteps(4), eta=0.7, eta_b=0.9, noise=noise))
        gap = (x0 - expected).abs().max().item()
        assert gap < 1e-5 if close else gap > 0.01, (sigma_model, gap)


def test_eval_nested_runs_use_eta_outer(eval_case):
    model, clean, op = eval_case
    task = TaskConfig(name="sr2", operator="sr2", sigma_y_pixel=0.05)
    method = MethodConfig("nested", nested=True, options={"eta": 0.85, "eta_b": 1.0}, eta_outer=0.8,
                          splits={6: (3, 2)})
    (x0, nfe), = solve(model, Run(task, method, (6,)), clean, op, evaluation_draws())[0].values()
    assert nfe == 6
    for eta_outer, close in ((0.8, True), (0.0, False)):
        expected = by_hand(model, clean, op, 0.1, lambda y, noise: list(solvers.nested(
            model, "ddrm", outer_steps=3, inner_steps=2, eta_outer=eta_outer, noise=noise, y=y, op=op,
            sigma_y=0.1, eta=0.85, eta_b=1.0))[-1].x0)
        gap = (x0 - expected).abs().max().item()
        assert gap < 1e-5 if close else gap > 0.01, (eta_outer, gap)
