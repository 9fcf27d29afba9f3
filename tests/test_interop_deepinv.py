"""ipsolve ↔ DeepInverse (the deepinv extra): operators as physics and back, ε-models as denoisers and back,
deepinv's DDRM on an ipsolve operator, and a nested restore through a deepinv physics ipsolve never had."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import degradations
from ipsolve.interop.deepinv import as_denoiser, from_denoiser, grid_sigmas, to_deepinv
from ipsolve.models import GaussianPrior, IsotropicGaussianPrior, load_model
from _toy_ops import linear_alphas_cumprod, random_gaussian_prior

dinv = pytest.importorskip("deepinv")
DATA = Path(__file__).parent / "data"
MISSING = "the deepinv extra is not installed: pip install 'ipsolve[deepinv]'"
# (name, channels, size): every kind of SVD: identity, block means, gray projection, permutation,
# separable blur (tiny singular values kept), bicubic (small ones dropped by its threshold)
SVD_OPERATORS = [("deno", 1, 8), ("sr4", 1, 8), ("sr2", 3, 8), ("color", 3, 8), ("inp", 2, 8),
                 ("deblur_gauss", 1, 8), ("sr_bicubic2", 1, 8)]


def operator(name, channels, size):
    return degradations.make(name, channels=channels, image_size=(size, size), seed=1)


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def digits():
    images = torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"]
    return images.to(torch.float64) / 255  # [0, 1], deepinv's range


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


# ---------------------------------------------------------------------------------------- physics
@pytest.mark.parametrize("name, channels, size", SVD_OPERATORS)
def test_svd_physics_is_the_operator(name, channels, size):
    op = operator(name, channels, size)
    physics = to_deepinv(op, dtype=torch.float64)
    assert isinstance(physics, dinv.physics.DecomposablePhysics)
    x, y = randn(3, *op.input_shape, seed=1), randn(3, *op.measurement_shape, seed=2)
    s = op.singulars()
    assert torch.equal(physics.mask, torch.cat([s, torch.zeros(op.dim - op.rank, dtype=torch.float64)])[None])
    spectral = dinv.physics.DecomposablePhysics  # deepinv's own formulas from U, V and the mask
    torch.testing.assert_close(spectral.A(physics, x), op.H(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(spectral.A_adjoint(physics, y), op.Ht(y), rtol=0, atol=1e-13)
    torch.testing.assert_close(physics.A(x), op.H(x), rtol=0, atol=0)
    torch.testing.assert_close(physics.A_dagger(y), op.H_pinv(y), rtol=0, atol=0)
    # and that operator is linear algebra's: ⟨Ax, y⟩ = ⟨x, Aᵀy⟩, A A† A = A
    assert torch.allclose((physics.A(x) * y).sum(), (x * physics.A_adjoint(y)).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(physics.A(physics.A_dagger(physics.A(x))), physics.A(x), rtol=0, atol=1e-9)
    if s.min() > 1e-5:  # deepinv's pseudo-inverse drops singular values below 1e-5, ipsolve's none
        torch.testing.assert_close(spectral.A_dagger(physics, y), op.H_pinv(y), rtol=0, atol=1e-12)


def test_the_noise_model_carries_sigma_in_deepinv_units():
    physics = to_deepinv(operator("sr2", 1, 8), sigma_y=0.2)
    assert isinstance(physics.noise_model, dinv.physics.GaussianNoise)
    assert float(physics.noise_model.sigma) == pytest.approx(0.1)  # model units [-1, 1] → deepinv's [0, 1]
    assert isinstance(to_deepinv(operator("sr2", 1, 8)).noise_model, dinv.physics.ZeroNoise)
    with pytest.raises(ValueError, match="sigma_y must be a finite number >= 0"):
        to_deepinv(operator("sr2", 1, 8), sigma_y=-1)


def test_an_operator_without_svd_becomes_a_linear_physics():
    op = degradations.make("deblur_gauss+inp", channels=1, image_size=(8, 8), seed=1)
    physics = to_deepinv(op, dtype=torch.float64)
    assert isinstance(physics, dinv.physics.LinearPhysics)
    assert not isinstance(physics, dinv.physics.DecomposablePhysics)
    x, y = randn(2, 1, 8, 8, seed=3), randn(2, *op.measurement_shape, seed=4)
    assert torch.equal(physics.A(x), op.H(x)) and torch.equal(physics.A_adjoint(y), op.Ht(y))
    assert torch.equal(physics.A_dagger(y), op.H_pinv(y))
    assert physics.adjointness_test(x).abs() < 1e-12


def test_refusals_are_one_line():
    with pytest.raises(ValueError, match="to_deepinv takes linear operators") as error:
        to_deepinv(degradations.make("saturate", channels=1, image_size=(8, 8)))
    assert "\n" not in str(error.value)
    physics = to_deepinv(operator("sr2", 1, 8))
    with pytest.raises(ValueError, match="a physics made by to_deepinv is fixed") as error:
        physics.A(torch.zeros(1, 1, 8, 8), mask=torch.ones(1))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("convert", [lambda: to_deepinv(operator("sr2", 1, 8)),
                                     lambda: as_denoiser(IsotropicGaussianPrior(torch.zeros(1, 2, 2), 1.0,
                                                                                linear_alphas_cumprod()))])
def test_a_missing_extra_is_one_line(monkeypatch, convert):
    monkeypatch.setitem(sys.modules, "deepinv", None)  # what `import deepinv` sees when it is not installed
    with pytest.raises(ImportError) as error:
        convert()
    assert str(error.value) == MISSING


# ---------------------------------------------------------------------------------------- denoisers
def x0_by_hand(model, x, t):
    """[0, 1] image, timestep → the model's x̂₀ in [0, 1] at ᾱ_t for the noisy model-space image 2x − 1."""
    a = model.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * (2 * x - 1)
    x0 = (x_t - (1 - a).sqrt() * model(x_t, torch.as_tensor(t))) / a.sqrt()
    return (x0 + 1) / 2


def test_as_denoiser_is_the_models_x0_on_its_grid():
    prior = random_gaussian_prior((1, 3, 3), torch.Generator().manual_seed(0), linear_alphas_cumprod())
    denoiser = as_denoiser(prior)
    assert isinstance(denoiser, dinv.models.Denoiser)
    x = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 400, 999])  # one noise level per row
    sigma = grid_sigmas(prior.alphas_cumprod)[t]
    torch.testing.assert_close(sigma, ((1 - prior.alphas_cumprod[t]) / prior.alphas_cumprod[t]).sqrt() / 2)
    torch.testing.assert_close(denoiser(x, sigma), x0_by_hand(prior, x, t), rtol=0, atol=1e-12)
    torch.testing.assert_close(denoiser(x[1:2], float(sigma[1])), x0_by_hand(prior, x[1:2], t[1:2]),
                               rtol=0, atol=1e-12)
    assert torch.equal(denoiser(x, 0.0), x)  # no noise: nothing to remove


def test_as_denoiser_between_grid_points_uses_the_nearest_timestep():
    prior = random_gaussian_prior((1, 3, 3), torch.Generator().manual_seed(0), linear_alphas_cumprod())
    x = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low, high = grid_sigmas(prior.alphas_cumprod)[[300, 301]]
    sigma = float(low * 0.9 + high * 0.1)  # nearer timestep 300 (in log SNR as in σ here)
    a = 1 / (1 + 4 * sigma**2)  # the ᾱ of this σ, between ᾱ_300 and ᾱ_301
    expected = (2 * x - 1) - 2 * sigma * prior(math.sqrt(a) * (2 * x - 1), torch.tensor([300]))
    torch.testing.assert_close(as_denoiser(prior)(x, sigma), (expected + 1) / 2, rtol=0, atol=1e-12)


def test_as_denoiser_on_the_embedded_model_to_float32_rounding(embedded, digits):
    x = (digits[:4] + 0.05 * randn(4, 1, 32, 32, seed=5)).float()
    t = torch.tensor([50, 200, 400, 600])
    with torch.no_grad():
        got = as_denoiser(embedded)(x, grid_sigmas(embedded.alphas_cumprod)[t].float())
        expected = x0_by_hand(embedded, x.double(), t)
    assert (got.double() - expected).abs().max() < 4e-6


def test_from_denoiser_inverts_as_denoiser():
    prior = random_gaussian_prior((1, 3, 3), torch.Generator().manual_seed(0), linear_alphas_cumprod())
    model = from_denoiser(as_denoiser(prior), prior.alphas_cumprod)
    x_t, t = randn(3, 1, 3, 3, seed=6), torch.tensor([1, 500, 998])
    torch.testing.assert_close(model(x_t, t), prior(x_t, t), rtol=0, atol=1e-10)


def test_from_denoiser_of_the_exact_denoiser_is_the_exact_epsilon():
    """D(x, σ) = the posterior mean of N(μ, v I) under noise 2σ in model space, written by hand."""
    mean, variance = 0.3 * randn(1, 4, 4, seed=7), 0.5
    prior = IsotropicGaussianPrior(mean, variance, linear_alphas_cumprod())

    def denoiser(x, sigma):
        noise = (2 * torch.as_tensor(sigma, dtype=x.dtype)).reshape(-1, 1, 1, 1) ** 2
        return (mean + variance / (variance + noise) * (2 * x - 1 - mean) + 1) / 2

    model = from_denoiser(denoiser, prior.alphas_cumprod)
    x_t, t = randn(2, 1, 4, 4, seed=8), torch.tensor([10, 700])
    torch.testing.assert_close(model(x_t, t), prior(x_t, t), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="alphas_cumprod must be a 1-D schedule"):
        from_denoiser(denoiser, torch.tensor([1.0, 0.5]))


# ---------------------------------------------------------------------------------------- deepinv's DDRM
def test_deepinvs_ddrm_runs_block_sr_through_to_deepinv(embedded, digits):
    op = degradations.make("sr2", channels=1, image_size=(32, 32))
    physics = to_deepinv(op, sigma_y=0.02)  # σ = 0.01 in deepinv's [0, 1] units
    clean = digits[:8].float()
    with torch.random.fork_rng():  # deepinv draws from torch's global generator
        torch.manual_seed(0)
        y = physics(clean)
        restored = dinv.sampling.DDRM(as_denoiser(embedded), sigmas=np.linspace(1, 0, 20))(y, physics)
    assert restored.shape == clean.shape
    error, baseline = (restored - clean).square().mean(), (physics.A_dagger(y) - clean).square().mean()
    assert error < 0.4 * baseline  # far better than nearest-neighbour upsampling of y (measured: 0.14)
    assert (physics.A(restored) - y).square().mean() < 0.1 * (physics.A(restored.flip(0)) - y).square().mean()
