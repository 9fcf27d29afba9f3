"""DDRM equals the reference code's mean paths (every random draw zero) on the prior N(0, 0.25 I)."""
from pathlib import Path

import pytest
import torch

import degradations
import solvers
from ipsolve.models import GaussianPrior
from _toy_ops import DenseOperator

REFERENCE = torch.load(Path(__file__).parent / "data" / "ddrm_reference.pt", weights_only=True)
ALPHAS_CUMPROD = torch.cumprod(1 - REFERENCE["betas"], 0)
RUNS = REFERENCE["runs"]


class ClosedFormPrior:
    """ε̂(x, t) = √(1−ᾱ_t) x / (0.25 ᾱ_t + 1 − ᾱ_t), the exact ε of N(0, 0.25 I)."""

    alphas_cumprod = ALPHAS_CUMPROD

    def __call__(self, x, t):
        a = ALPHAS_CUMPROD[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (REFERENCE["prior_var"] * a + 1 - a)


def operator(name):
    case = REFERENCE["cases"][name]
    extra = {"mask": case["mask"]} if name == "inp" else {}
    return degradations.make(name, channels=case["C"], image_size=(case["n"], case["n"]), **extra)


def run_ddrm(run, op, model, callback=None):
    y = op.H(REFERENCE["cases"][run["op"]]["x"])
    return solvers.ddrm(model, y, op, run["sigma_y"], run["timesteps"], eta=run["eta"], eta_b=run["eta_b"],
                        x_T=run["x_T"], noise=torch.zeros, callback=callback)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r['op']}-sy{r['sigma_y']}-eta{r['eta']}")
def test_final_output_matches_reference(run):
    assert relative_error(run_ddrm(run, operator(run["op"]), ClosedFormPrior()), run["final"]) < 1e-8


@pytest.mark.parametrize("run", [r for r in RUNS if r["op"] == "sr4"], ids=lambda r: f"sy{r['sigma_y']}")
def test_x0_predictions_match_reference_step_by_step(run):
    infos = []
    run_ddrm(run, operator("sr4"), ClosedFormPrior(), callback=infos.append)
    assert [info["nfe"] for info in infos] == list(range(1, len(run["timesteps"]) + 1))
    assert [info["t"] for info in infos] == run["timesteps"]
    for info, expected in zip(infos, run["x0_preds"]):
        assert relative_error(info["x0"], expected) < 1e-8


@pytest.mark.parametrize("run", [r for r in RUNS if r["op"] != "sr16" and r["sigma_y"] == 0.1],
                         ids=lambda r: r["op"])
def test_dense_svd_of_the_same_operator_gives_the_reference(run):
    """DDRM depends on H only: a generic dense SVD of the probed operator reproduces the reference too."""
    assert relative_error(run_ddrm(run, DenseOperator.copy_of(operator(run["op"])), ClosedFormPrior()),
                          run["final"]) < 1e-8


def test_gaussian_prior_equals_the_closed_form_eps():
    prior = GaussianPrior(torch.zeros(3, 4, 4), REFERENCE["prior_var"] * torch.eye(48), ALPHAS_CUMPROD)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    torch.testing.assert_close(prior(x, t), ClosedFormPrior()(x, t), rtol=1e-12, atol=1e-14)

