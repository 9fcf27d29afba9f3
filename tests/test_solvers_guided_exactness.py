"""ΠGDM and DPS against independent numbers: ΠGDM's samples against the exact Gaussian posterior's moments,
DPS's gradient against finite differences, and DPS's measurement fit on the embedded MNIST model (a linear
operator, a composition without an SVD and the nonlinear saturating sensor).

ΠGDM's guidance against the closed-form ∇ log p(y | x_t) is test_solvers_guided.py's
test_pigdm_on_a_standard_normal_prior_is_ddim_on_the_exact_posterior (to 1e-9, any grid)."""
import math
from pathlib import Path

import pytest
import torch

import degradations
import solvers
from _moments import assert_moments
from _toy_ops import linear_alphas_cumprod, random_dense_operator
from ipsolve.imageio import load_image, to_model
from ipsolve.models import GaussianPrior, load_model
from solvers.dps import measurement_gradient

F64 = torch.float64
DIGIT = Path(__file__).resolve().parents[1] / "ipsolve" / "examples" / "digit_clean.png"


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pigdm_samples_have_the_exact_posterior_moments():
    """N(μ, I): Cov[x₀ | x_t] = (1−ᾱ) I exactly, so ΠGDM's score weight is DDIM on the exact posterior model
    and, with
    a fine grid (500 steps, η = 1: ancestral), its draws follow p(x₀ | y) up to a discretisation bias well
    inside the Monte-Carlo error of 2000 draws."""
    shape, count = (1, 2, 3), 2000
    mean = 0.5 * torch.randn(shape, generator=generator(30), dtype=F64)
    prior = GaussianPrior(mean, torch.eye(math.prod(shape), dtype=F64), linear_alphas_cumprod())
    op, sigma_y = random_dense_operator(3, shape, generator(31)), 0.3
    y = op.H(prior.sample(1, generator(32))) + sigma_y * torch.randn(1, 3, generator=generator(33), dtype=F64)
    draws = solvers.pigdm(prior, y.expand(count, -1), op, sigma_y, solvers.ddrm_timesteps(500), eta=1.0,
                          generator=generator(34), weight="score")
    posterior = prior.posterior(y, op, sigma_y)
    assert_moments(draws.reshape(count, -1), posterior.mean.reshape(-1), posterior.covariance[0])


class TanhModel:
    """A small nonlinear ε-model, per sample: ε = tanh(x W + ᾱ b) over flattened images."""

    def __init__(self, dim, seed):
        g = generator(seed)
        self.weight = torch.randn(dim, dim, generator=g, dtype=F64) / math.sqrt(dim)
        self.bias = torch.randn(dim, generator=g, dtype=F64)
        self.alphas_cumprod = linear_alphas_cumprod()

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].reshape(-1, 1)
        return torch.tanh(x.reshape(x.shape[0], -1) @ self.weight + a * self.bias).reshape(x.shape)


def residual_norm(model, x, t, y, forward):
    """‖y − A(x̂₀(x_t))‖ per sample, x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ written out."""
    a = model.alphas_cumprod[t]
    x0 = (x - (1 - a).sqrt() * model(x, torch.full((x.shape[0],), t))) / a.sqrt()
    return (y - forward(x0)).reshape(x.shape[0], -1).norm(dim=1)


@pytest.mark.parametrize("name", ["saturate", "sr2"])
def test_dps_gradient_is_the_finite_difference_of_the_residual_norm(name):
    shape, t, step = (1, 4, 4), 400, 1e-6
    model = TanhModel(math.prod(shape), seed=40)
    options = {"gain": 3.0} if name == "saturate" else {}
    forward = degradations.make(name, channels=1, image_size=shape[1:], **options).H
    x = torch.randn(2, *shape, generator=generator(41), dtype=F64)
    y = forward(0.5 * torch.randn(2, *shape, generator=generator(42), dtype=F64))
    _, _, _, distance, grad = measurement_gradient(model, x, t, y, forward)
    basis = torch.eye(x[0].numel(), dtype=F64).reshape(-1, *shape)
    differences = torch.stack([(residual_norm(model, x + step * e, t, y, forward)
                                - residual_norm(model, x - step * e, t, y, forward)) / (2 * step) for e in basis], 1)
    torch.testing.assert_close(distance, residual_norm(model, x, t, y, forward), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad.reshape(2, -1), differences, rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def embedded_forward(name):
    if name == "deblur_uni+inp":
        return degradations.compose(degradations.make("deblur_uni", channels=1, image_size=(32, 32), width=5),
                                    degradations.make("inp", channels=1, image_size=(32, 32), seed=1))
    return degradations.make(name, channels=1, image_size=(32, 32))


@pytest.mark.parametrize("name, step_size", [("sr4", 1.0), ("deblur_uni+inp", 1.0), ("saturate", 0.3)])
def test_dps_fits_the_measurement_on_the_embedded_model(embedded, name, step_size):
    """‖y − A(x̂₀)‖ falls over a 15-step run, and ends below the same run without guidance. With so few
    steps ζ = 1 throws the saturating sensor's x̂₀ deep into saturation, where its gradient vanishes; ζ = 0.3
    does not."""
    op = embedded_forward(name)
    digit = to_model(load_image(DIGIT))[None]
    measured = op.H(digit)
    y = measured + 0.05 * torch.randn(measured.shape, generator=generator(50))
    x_T = torch.randn(1, 1, 32, 32, generator=generator(51))
    distances = {}
    for zeta in (0.0, step_size):
        seen = []
        with torch.no_grad():
            out = solvers.dps(embedded, y, op, solvers.ddrm_timesteps(15), step_size=zeta, x_T=x_T,
                              generator=generator(52), callback=lambda info: seen.append(float(info["distance"])))
        assert out.shape == digit.shape and torch.isfinite(out).all()
        distances[zeta] = seen + [float((y - op.H(out)).norm())]
    guided, unguided = distances[step_size], distances[0.0]
    assert guided[-1] < 0.4 * guided[0], guided
    assert guided[-1] < 0.9 * unguided[-1], (guided, unguided)
