"""DPS equals the official code's runs (DPS2022/diffusion-posterior-sampling, tests/data/pigdm_dps_reference.pt):
every draw recorded, float64, a fixed nonlinear ε-model, with and without the official x̂₀ clamp."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import degradations
import solvers

DATA = torch.load(Path(__file__).parent / "data" / "pigdm_dps_reference.pt", weights_only=True)
RUNS = DATA["dps"]
IDS = [f"{r['op']}-C{r['C']}-s{r['sigma']}-z{r['step_size']}-{'learned' if r['learned_sigma'] else 'fixed'}-{i}"
       for i, r in enumerate(RUNS)]


class ReferenceModel:
    """The file's ε-model: √(1−ᾱ) x / (ᾱ C2 + 1 − ᾱ) + tanh(conv2d(x, W) + ᾱ B), C2 the file's prior_var;
    with learned variance also v = tanh(conv2d(x, W2) + (1 − ᾱ) B2) as C more channels."""

    def __init__(self, channels, learned_sigma):
        self.alphas_cumprod, self.learned_sigma = DATA["alphas_cumprod"], learned_sigma
        self.conv = DATA["conv"][channels]

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * x / (a * DATA["prior_var"] + 1 - a) + torch.tanh(
            F.conv2d(x, self.conv["W"], padding=1) + a * self.conv["B"].view(1, -1, 1, 1))
        if not self.learned_sigma:
            return eps
        v = torch.tanh(F.conv2d(x, self.conv["W2"], padding=1) + (1 - a) * self.conv["B2"].view(1, -1, 1, 1))
        return torch.cat([eps, v], dim=1)


def recorded(draws):
    """noise(shape) handing out the run's recorded draws in order."""
    remaining = list(draws)

    def noise(shape):
        return remaining.pop(0).reshape(shape)
    return noise


def measurement(run):
    """(y, forward) as the official pipeline had them: inp_full masks the image and keeps the noise of every
    pixel (y_full, forward x ↦ x ⊙ mask); the others y = A(H⁺y) in ipsolve's ordering."""
    if run["op"] == "inp_full":
        mask = run["mask"].to(torch.float64)
        return run["y_full"], lambda x: x * mask
    size = (run["n"], run["n"])
    if run["op"] == "inp":
        op = degradations.make("inp", channels=run["C"], image_size=size, mask=run["mask"])
    else:
        op = degradations.make(run["op"], channels=run["C"], image_size=size)
    return op.H(run["y_pinv"]), op


def run_dps(run, clip_x0):
    y, forward = measurement(run)
    model = ReferenceModel(run["C"], run["learned_sigma"])
    return solvers.dps(model, y, forward, run["timesteps"], step_size=run["step_size"], x_T=run["x_T"],
                       noise=recorded(run["noise"]), clip_x0=clip_x0)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_unclipped_run_matches_the_official_code(run):
    assert relative_error(run_dps(run, clip_x0=False), run["final"]) < 1e-9


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_clipped_run_matches_the_official_default(run):
    assert relative_error(run_dps(run, clip_x0=True), run["final_clip_default"]) < 1e-9


def test_the_clamp_changes_the_reference_runs():
    """The two references differ (the clamp is active in these runs), so each test above checks its setting."""
    assert all(relative_error(r["final"], r["final_clip_default"]) > 1e-3 for r in RUNS)
