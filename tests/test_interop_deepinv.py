"""ipsolve ↔ DeepInverse (the deepinv extra): operators as physics and back, ε-models as denoisers and back,
deepinv's DDRM on an ipsolve operator, and a nested restore through a deepinv physics ipsolve never had."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import degradations
import solvers
from ipsolve.interop.deepinv import (DeepinvForward, DeepinvLinearOperator, DeepinvSVDOperator, as_denoiser,
                                     from_deepinv, from_denoiser, from_spec, grid_sigmas, nearest_timesteps,
                                     physics_spec, to_deepinv)
from ipsolve.measurement import read_measurement, write_measurement
from ipsolve.models import IsotropicGaussianPrior, load_model
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
    assert float(to_deepinv(operator("sr2", 1, 8), sigma_y=0.0).noise_model.sigma) == 0  # noiseless, not refused
    with pytest.raises(ValueError, match="sigma_y must be a finite number >= 0"):
        to_deepinv(operator("sr2", 1, 8), sigma_y=-1)


def test_the_buffers_take_torchs_default_dtype_unless_told():
    op = operator("sr2", 1, 8)  # float64 singular values
    assert to_deepinv(op).mask.dtype == torch.get_default_dtype() == torch.float32
    assert to_deepinv(op, dtype=torch.float64).mask.dtype == torch.float64


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


FIXED = "mask: a physics made by to_deepinv is fixed; build another operator and convert it instead"


@pytest.mark.parametrize("name", ["sr2", "deblur_gauss+inp"])  # a DecomposablePhysics, a LinearPhysics
def test_every_method_of_a_converted_physics_refuses_per_call_parameters(name):
    """deepinv passes per-call parameters (a new mask, filter, …) as keywords: a converted operator is fixed,
    so each method refuses them rather than ignoring them."""
    op = degradations.make(name, channels=1, image_size=(8, 8), seed=1)
    physics = to_deepinv(op, dtype=torch.float64)
    x, y = randn(1, *op.input_shape), randn(1, *op.measurement_shape)
    calls = {"A": x, "A_adjoint": y, "A_dagger": y}
    if name == "sr2":
        calls.update(V=randn(1, op.dim), U_adjoint=y)
    for method, argument in calls.items():
        with pytest.raises(ValueError) as error:
            getattr(physics, method)(argument, mask=torch.ones(1))
        assert str(error.value) == FIXED, method


@pytest.mark.parametrize("convert", [lambda: to_deepinv(operator("sr2", 1, 8)),
                                     lambda: from_deepinv(object()),
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


def test_nearest_timesteps_is_nearest_in_log_signal_to_noise_ratio():
    """Grid ᾱ = 0.9, 0.5, 0.1: log(ᾱ/(1 − ᾱ)) = 2.197, 0, −2.197. ᾱ = 0.72 (0.944) is nearest to 0.5 in log SNR,
    though nearer to 0.9 in ᾱ itself; 0.3 (−0.847) → 0.5; 0.95 (2.944) → 0.9; 0.05 (−2.944) → 0.1."""
    got = nearest_timesteps([0.9, 0.5, 0.1], torch.tensor([0.72, 0.3, 0.95, 0.05]))
    assert got.dtype == torch.long and got.tolist() == [1, 1, 0, 2]


def test_as_denoiser_refuses_a_negative_sigma_and_options_it_does_not_have():
    prior = random_gaussian_prior((1, 3, 3), torch.Generator().manual_seed(0), linear_alphas_cumprod())
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError) as error:
        as_denoiser(prior)(x, torch.tensor([0.1, -0.01], dtype=torch.float64))
    assert str(error.value) == "sigma must be >= 0, got [0.1, -0.01]"
    with pytest.raises(ValueError) as error:
        as_denoiser(prior)(x, 0.1, physics=None)
    assert str(error.value) == "physics: not an option of an ipsolve model's denoiser"


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


def test_from_denoiser_keeps_float32_for_a_float32_denoiser():
    """A deepinv denoiser with float32 weights gets float32 images and σ, and the ε-model answers in float32:
    the exact ε of test_from_denoiser_of_the_exact_denoiser_is_the_exact_epsilon to float32 rounding."""
    mean, variance = 0.3 * randn(1, 4, 4, seed=7), 0.5
    prior = IsotropicGaussianPrior(mean, variance, linear_alphas_cumprod())
    seen = []

    def denoiser(x, sigma):
        seen.append((x.dtype, sigma.dtype))
        noise = (2 * sigma).reshape(-1, 1, 1, 1) ** 2
        return (mean.float() + variance / (variance + noise) * (2 * x - 1 - mean.float()) + 1) / 2

    x_t, t = randn(2, 1, 4, 4, seed=8), torch.tensor([10, 700])
    got = from_denoiser(denoiser, prior.alphas_cumprod)(x_t.float(), t)
    assert got.dtype == torch.float32 and seen == [(torch.float32, torch.float32)]
    torch.testing.assert_close(got.double(), prior(x_t, t), rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------------------- deepinv's DDRM
def test_deepinvs_ddrm_runs_block_sr_through_to_deepinv(embedded, digits):
    op = degradations.make("sr2", channels=1, image_size=(32, 32))
    physics = to_deepinv(op, sigma_y=0.02, dtype=torch.float64)  # σ = 0.01 in deepinv's [0, 1] units
    clean = digits[:8]
    with torch.random.fork_rng():  # deepinv draws from torch's global generator
        torch.manual_seed(0)
        y = physics(clean)
        restored = dinv.sampling.DDRM(as_denoiser(embedded), sigmas=np.linspace(1, 0, 20))(y, physics)
    assert restored.shape == clean.shape and restored.dtype == torch.float64
    error, baseline = (restored - clean).square().mean(), (physics.A_dagger(y) - clean).square().mean()
    assert error < 0.4 * baseline  # far better than nearest-neighbour upsampling of y (measured: 0.14)
    consistency = (physics.A(restored) - y).square().mean()  # against the other digits' images: measured 0.008
    assert consistency < 0.05 * (physics.A(restored.flip(0)) - y).square().mean()


# ---------------------------------------------------------------------------------------- deepinv → ipsolve
def gaussian_filter(sigma, width, dtype=torch.float64):
    """A (1, 1, width, width) normalised Gaussian filter, as deepinv's blurs take it."""
    taps = degradations.gaussian_kernel(sigma, width)
    return torch.outer(taps, taps)[None, None].to(dtype)


def dense(apply, shape):
    """The matrix of the linear map `apply` on (1, *shape) tensors, column by column."""
    basis = torch.eye(math.prod(shape), dtype=torch.float64).reshape(-1, *shape)
    return torch.stack([apply(column[None]).reshape(-1) for column in basis], dim=1)


@pytest.mark.parametrize("name, channels, size", SVD_OPERATORS)
def test_to_deepinv_then_from_deepinv_is_the_operator(name, channels, size):
    op = operator(name, channels, size)
    back = from_deepinv(to_deepinv(op, dtype=torch.float64))
    assert isinstance(back, DeepinvSVDOperator) and back.input_shape == op.input_shape
    assert back.measurement_shape == op.measurement_shape and torch.equal(back.singulars(), op.singulars())
    x, y = randn(2, *op.input_shape, seed=1), randn(2, *op.measurement_shape, seed=2)
    for method, argument in (("H", x), ("Ht", y), ("H_pinv", y), ("Vt", x), ("Ut", y)):
        torch.testing.assert_close(getattr(back, method)(argument), getattr(op, method)(argument), rtol=0, atol=1e-12)


def test_ddrm_through_the_round_trip_is_ddrm_draw_for_draw(embedded, digits):
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    back = from_deepinv(to_deepinv(op, dtype=torch.float64))
    y = op.H(2 * digits[:2] - 1) + 0.05 * randn(2, 1, 8, 8, seed=1)
    results = [solvers.ddrm(embedded, y, o, 0.05, solvers.ddrm_timesteps(5), generator=torch.Generator().manual_seed(2))
               for o in (back, op)]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)


def test_deepinvs_inpainting_is_ipsolves_draw_for_draw(embedded):
    """deepinv's Inpainting (full-size y, zeros where missing) and ipsolve's (the observed pixels) share V's
    order, so DDRM through the converted physics makes the same draws and the same image."""
    mask = degradations.random_mask((32, 32), 0.4, seed=2)
    physics = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=mask.to(torch.float64)[None])
    op, ours = from_deepinv(physics), degradations.Inpainting(mask, channels=1)
    assert isinstance(op, DeepinvSVDOperator) and op.rank == ours.rank == int(mask.sum())
    x = randn(2, 1, 32, 32, seed=3).clamp(-1, 1)
    torch.testing.assert_close(op.H(x), x * mask, rtol=0, atol=0)
    torch.testing.assert_close(op.H_pinv(op.H(x)), ours.H_pinv(ours.H(x)), rtol=0, atol=0)
    results = [solvers.ddrm(embedded, o.H(x) + 0.05 * o.H(randn(2, 1, 32, 32, seed=4)), o, 0.05,
                            solvers.ddrm_timesteps(5), generator=torch.Generator().manual_seed(5))
               for o in (op, ours)]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)


def test_deepinvs_mri_is_an_svd_operator():
    mask = (torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.4).to(torch.float64)
    physics = dinv.physics.MRI(mask=mask, img_size=(2, 8, 8))
    op = from_deepinv(physics)
    assert isinstance(op, DeepinvSVDOperator) and op.input_shape == (2, 8, 8) and op.rank == 2 * int(mask.sum())
    x, y = randn(3, 2, 8, 8, seed=1), physics.A(randn(3, 2, 8, 8, seed=2))
    torch.testing.assert_close(op.H(x), physics.A(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.Ht(y), physics.A_adjoint(y), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.H_pinv(y), physics.A_dagger(y), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.V(op.Vt(x)), x, rtol=0, atol=1e-12)  # V is orthogonal
    torch.testing.assert_close(op.singulars(), torch.ones(op.rank, dtype=torch.float64))


def sign_flips(shape, seed):
    """A float64 ±1 pattern: multiplying by it is an orthogonal (and symmetric) map."""
    return torch.where(randn(*shape, seed=seed) > 0, 1.0, -1.0).to(torch.float64)


def test_a_custom_decomposable_physics_is_its_svd_in_the_order_of_its_mask():
    """A = U diag(mask) Vᵀ with V, U sign flips held in float64 and a mask with zeros: ipsolve's Vt is
    deepinv's coefficients with the nonzero mask entries first (in their order), Ut takes those of
    U_adjoint, U puts them back; every map answers in the dtype of its input (float32 here)."""
    v, u = sign_flips((1, 1, 3, 3), 1), sign_flips((1, 1, 3, 3), 2)
    mask = torch.tensor([0.5, 0, 2, 1, 0, 0, 3, 1.5, 0.25], dtype=torch.float64).reshape(1, 1, 3, 3)
    physics = dinv.physics.DecomposablePhysics(V_adjoint=lambda x: x * v, V=lambda z: z * v, U=lambda w: w * u,
                                               U_adjoint=lambda y: y * u, mask=mask, img_size=(1, 3, 3))
    op = from_deepinv(physics)
    assert isinstance(op, DeepinvSVDOperator) and op.rank == 6 and op.name == "deepinv.DecomposablePhysics"
    kept, null = [0, 2, 3, 6, 7, 8], [1, 4, 5]
    assert torch.equal(op.singulars(), mask.flatten()[kept])
    x, y = randn(2, 1, 3, 3, seed=3).float(), randn(2, 1, 3, 3, seed=4).float()
    flat = (x.double() * v).reshape(2, -1)
    expected = {"Vt": (x, flat[:, kept + null]), "Ut": (y, (y.double() * u).reshape(2, -1)[:, kept]),
                "V": (flat[:, kept + null].float(), x.double()),
                "U": (y.reshape(2, -1)[:, kept], (torch.zeros(2, 9, dtype=torch.float64).index_copy(
                    1, torch.tensor(kept), y.double().reshape(2, -1)[:, kept]).reshape(2, 1, 3, 3) * u)),
                "H": (x, physics.A(x.double())), "Ht": (y, physics.A_adjoint(y.double()))}
    for method, (argument, value) in expected.items():
        got = getattr(op, method)(argument)
        assert got.dtype == torch.float32, method
        torch.testing.assert_close(got.double(), value, rtol=0, atol=1e-6, msg=method)


def test_a_decomposable_physics_unlike_an_svd_becomes_a_linear_operator():
    """ipsolve's SVD needs real coefficients, one per pixel: deepinv's single-pixel camera (5 coefficients for
    16 pixels), BlurFFT (real and imaginary parts of an rfft: 80 numbers for 64 pixels) and a physics whose
    V is the (complex) Fourier transform are linear operators instead, H = A."""
    fourier = dinv.physics.DecomposablePhysics(
        V_adjoint=lambda x: torch.fft.fft2(x, norm="ortho"), V=lambda z: torch.fft.ifft2(z, norm="ortho").real,
        U=lambda w: torch.fft.ifft2(w, norm="ortho").real, U_adjoint=lambda y: torch.fft.fft2(y, norm="ortho"),
        mask=torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        img_size=(1, 4, 4))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        camera = dinv.physics.SinglePixelCamera(m=5, img_size=(1, 4, 4), fast=False)
    blur = dinv.physics.BlurFFT(img_size=(1, 4, 4), filter=gaussian_filter(1.0, 3))
    v = sign_flips((1, 1, 4, 4), 1)
    masks = [torch.linspace(-0.5, 1, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)]
    negative, zero = (dinv.physics.DecomposablePhysics(V_adjoint=lambda x: x * v, V=lambda z: z * v,
                                                       mask=mask.reshape(1, 1, 4, 4), img_size=(1, 4, 4))
                      for mask in masks)  # a mask entry < 0 (no singular value) and a mask of zeros (no SVD)
    for physics, dtype in ((camera, torch.float32), (blur, torch.float64), (fourier, torch.float64),
                           (negative, torch.float64), (zero, torch.float64)):
        op = from_deepinv(physics)
        assert isinstance(op, DeepinvLinearOperator), type(physics).__name__
        assert op.name == f"deepinv.{type(physics).__name__}"
        x = randn(2, 1, 4, 4, seed=1).to(dtype)
        torch.testing.assert_close(op.H(x), physics.A(x), rtol=0, atol=0)


def test_a_linear_operator_answers_in_the_dtype_of_its_input():
    """A LinearPhysics holding float64 weights w (A = Aᵀ = diag(w)) on float32 images: H, Ht and the CG
    pseudo-inverse (y / w) in float32."""
    w = torch.linspace(0.5, 2, 9, dtype=torch.float64).reshape(1, 1, 3, 3)
    op = from_deepinv(dinv.physics.LinearPhysics(A=lambda x: x * w, A_adjoint=lambda y: y * w, img_size=(1, 3, 3)))
    x = randn(2, 1, 3, 3, seed=1).float()
    for got, expected in ((op.H(x), x.double() * w), (op.Ht(x), x.double() * w), (op.H_pinv(x), x.double() / w)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def test_a_linear_physics_without_svd_gets_a_least_squares_pseudo_inverse():
    physics = dinv.physics.Downsampling(img_size=(1, 8, 8), filter=gaussian_filter(1.0, 5), factor=2,
                                        padding="circular")
    op = from_deepinv(physics, input_shape=(1, 8, 8))  # Downsampling keeps no img_size
    assert isinstance(op, DeepinvLinearOperator) and op.measurement_shape == (1, 4, 4)
    matrix = dense(physics.A, (1, 8, 8))
    y = randn(2, 1, 4, 4, seed=1)
    x = randn(2, 1, 8, 8)
    torch.testing.assert_close(op.H(x), (x.reshape(2, -1) @ matrix.T).reshape(2, 1, 4, 4))
    expected = (y.reshape(2, -1) @ torch.linalg.pinv(matrix).T).reshape(2, 1, 8, 8)
    torch.testing.assert_close(op.H_pinv(y), expected, rtol=0, atol=1e-6)  # CG on HᵀH: cond²
    with pytest.raises(ValueError) as error:  # no SVD: the solvers that need one refuse it in one line
        solvers.ddrm(IsotropicGaussianPrior(torch.zeros(1, 8, 8), 1.0, linear_alphas_cumprod()), y, op, 0.1, [10, 0])
    assert str(error.value) == ("ddrm needs an operator with an SVD (ddrm and ddnm do) and deepinv.Downsampling has "
                                "none: use pigdm or dps, which need only H and Ht")


def test_a_nonlinear_physics_is_a_forward_model_for_dps():
    physics = dinv.physics.Physics(A=lambda x: torch.tanh(3 * x))
    forward = from_deepinv(physics, input_shape=(1, 4, 4))
    assert isinstance(forward, DeepinvForward) and forward.measurement_shape == (1, 4, 4)
    x = randn(2, 1, 4, 4, seed=1)
    torch.testing.assert_close(forward(x), torch.tanh(3 * (x + 1) / 2), rtol=0, atol=0)  # deepinv sees [0, 1]
    prior = IsotropicGaussianPrior(torch.zeros(1, 4, 4), 0.3, linear_alphas_cumprod())
    restored = solvers.dps(prior, forward(x), forward, [500, 200, 0], generator=torch.Generator().manual_seed(0))
    assert restored.shape == x.shape and torch.isfinite(restored).all()
    with pytest.raises(ValueError, match=r"from_deepinv needs input_shape=\(C, H, W\)"):
        from_deepinv(physics)


# ---------------------------------------------------------------------------------------- measurement files
def test_a_measurement_file_records_a_deepinv_physics(tmp_path, monkeypatch):
    blur = dinv.physics.Blur(filter=gaussian_filter(1.0, 5, torch.float32), padding="circular")
    op = from_deepinv(blur, input_shape=(1, 16, 16))
    x = (randn(1, 1, 16, 16, seed=1).clamp(-1, 1) * 0.5).float()  # the physics' dtype
    write_measurement(tmp_path / "y.png", op.H(x), op, 0.1)
    read = read_measurement(tmp_path / "y.png")
    assert read.op.spec() == op.spec() and read.op.spec()["class"] == "deepinv.physics.blur.Blur"
    assert read.sigma_y == 0.1 and isinstance(read.op, DeepinvLinearOperator)
    torch.testing.assert_close(read.op.H(x), blur.A(x), rtol=0, atol=0)
    assert (read.y - op.H(x)).abs().max() <= 1 / 255 + 1e-6  # 8-bit rounding of [-1, 1] (step 2/255)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "deepinv", None)
        with pytest.raises(ValueError) as error:
            read_measurement(tmp_path / "y.png")
    assert str(error.value) == f"the measurement records a DeepInverse physics and {MISSING}"
    sidecar = tmp_path / "y.png.json"  # a sidecar edited by hand: a tensor's dtype that torch has not
    record = json.loads(sidecar.read_text())
    record["operator"]["params"]["filter"]["dtype"] = "load"
    sidecar.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="^a recorded deepinv parameter has the dtype 'load', which is no torch dtype$"):
        read_measurement(tmp_path / "y.png")


def test_a_physics_that_cannot_be_rebuilt_is_refused_in_one_line(tmp_path):
    physics = dinv.physics.LinearPhysics(A=lambda x: 2 * x, A_adjoint=lambda y: 2 * y, img_size=(1, 8, 8))
    with pytest.raises(ValueError) as error:
        write_measurement(tmp_path / "y.png", torch.zeros(1, 1, 8, 8), from_deepinv(physics), 0.0)
    assert str(error.value) == ("deepinv.LinearPhysics cannot be recorded in a measurement file: its parameter A "
                                "is a method, not numbers, strings or a small real tensor")
    assert not (tmp_path / "y.png").exists()
    with pytest.raises(ValueError, match="only deepinv.physics classes are"):
        from_deepinv(to_deepinv(operator("sr2", 1, 8))).spec()


def test_a_physics_spec_records_every_parameter_it_is_rebuilt_from():
    """Downsampling's padding comes after its (unrecorded) device; Inpainting keeps no attribute for its
    parameter pixelwise, left at its default. Each rebuilt physics is the original's matrix, float64 included,
    and recording draws nothing from torch's global generator (which deepinv's noise draws from)."""
    mask = (torch.arange(16).reshape(1, 4, 4) % 3 > 0).to(torch.float64)
    reflect = dinv.physics.Downsampling(img_size=(1, 8, 8), filter=gaussian_filter(1.0, 3), factor=2, padding="reflect")
    cases = [(reflect, (1, 8, 8), {"img_size": None, "factor": 2, "padding": "reflect"}),
             (dinv.physics.Inpainting(img_size=(1, 4, 4), mask=mask), (1, 4, 4), {"img_size": [1, 4, 4]})]
    for physics, shape, plain in cases:
        with torch.random.fork_rng():
            torch.manual_seed(3)
            state = torch.get_rng_state()
            spec = physics_spec(physics, shape)
            assert torch.equal(torch.get_rng_state(), state)
        assert {key: spec["params"][key] for key in plain} == plain
        assert spec["channels"] == shape[0] and spec["image_size"] == list(shape[1:])
        x = randn(2, *shape, seed=1)
        torch.testing.assert_close(from_spec(spec).H(x), physics.A(x), rtol=0, atol=0)
    assert set(physics_spec(*cases[1][:2])["params"]) == {"img_size", "mask"}  # not pixelwise


def test_a_physics_spec_refuses_a_physics_its_parameters_rebuild_otherwise(monkeypatch):
    """The check: A of the rebuilt physics on a probe image against the physics' own A. A rebuild 1.5 times or
    1.001 times the original is another operator; one off by float32 round-off (1e-7) is the same."""
    import ipsolve.interop.deepinv as interop

    blur, rebuild = dinv.physics.Blur(filter=gaussian_filter(1.0, 3), padding="circular"), interop._rebuild
    for scale in (1.5, 1 + 1e-3, 1 + 1e-7):
        monkeypatch.setattr(interop, "_rebuild", lambda spec: dinv.physics.LinearPhysics(
            A=lambda x: scale * rebuild(spec).A(x), A_adjoint=lambda y: scale * rebuild(spec).A_adjoint(y)))
        if scale == 1 + 1e-7:
            assert physics_spec(blur, (1, 8, 8))["params"]["padding"] == "circular"
            continue
        with pytest.raises(ValueError) as error:
            physics_spec(blur, (1, 8, 8))
        assert str(error.value) == ("Blur cannot be recorded in a measurement file: rebuilt from its parameters "
                                    "(filter, padding, use_fft) it is another operator")


def test_grid_sigmas_are_computed_in_float64_from_any_schedule():
    schedule = [0.9999, 0.5, 0.01]  # a list, or float32 values: ᾱ near 1 needs float64 for 1 − ᾱ
    got = grid_sigmas(schedule)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([math.sqrt((1 - a) / a) / 2 for a in schedule], rel=1e-14)


class Doubling(dinv.physics.LinearPhysics):
    """A physics defined outside deepinv.physics: its class cannot be imported back by a measurement file."""

    def __init__(self, img_size=(1, 4, 4)):
        super().__init__(A=lambda x: 2 * x, A_adjoint=lambda y: 2 * y, img_size=img_size)


def test_a_physics_spec_refuses_in_one_line_what_it_cannot_rebuild():
    with pytest.raises(ValueError) as error:
        physics_spec(Doubling(), (1, 4, 4))
    assert str(error.value) == "Doubling cannot be recorded in a measurement file: only deepinv.physics classes are"
    with torch.random.fork_rng():
        physics = dinv.physics.CompressedSensing(m=10, img_size=(1, 4, 4))
    with pytest.raises(ValueError) as error:
        physics_spec(physics, (1, 4, 4))
    assert str(error.value) == ("CompressedSensing cannot be recorded in a measurement file: it keeps no attribute "
                                "for its parameter m")


def test_refusals_name_the_operator_and_the_expected_shape():
    forward = from_deepinv(dinv.physics.Physics(A=lambda x: x ** 2), input_shape=(1, 4, 4))
    linear = from_deepinv(dinv.physics.Downsampling(filter=gaussian_filter(1.0, 3), factor=2), input_shape=(1, 8, 8))
    for call, message in ((lambda: forward(torch.zeros(2, 1, 4, 5)),
                           "deepinv.Physics expects a image batch of shape (B, 1, 4, 4), got (2, 1, 4, 5)"),
                          (lambda: linear.H(torch.zeros(1, 8, 8)),
                           "deepinv.Downsampling expects a image batch of shape (B, 1, 8, 8), got (1, 8, 8)"),
                          (lambda: linear.Ht(torch.zeros(1, 1, 8, 8)),
                           "deepinv.Downsampling expects a measurement of shape (B, 1, 4, 4), got (1, 1, 8, 8)")):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message


# ---------------------------------------------------------------------------------------- a physics ipsolve never had
def real_mri(size=32, fraction=0.35, seed=0):
    """Single-coil MRI of a real image: deepinv's MRI (2-channel complex images) after x ↦ (x, 0)."""
    mask = torch.rand(size, size, generator=torch.Generator().manual_seed(seed)) < fraction
    mask[:, :3] = mask[:, -3:] = True  # the lowest horizontal frequencies (unshifted FFT)
    embed = dinv.physics.LinearPhysics(A=lambda x: torch.cat([x, torch.zeros_like(x)], 1),
                                       A_adjoint=lambda y: y[:, :1])
    return dinv.physics.MRI(mask=mask.to(torch.float64), img_size=(2, size, size)) * embed


@pytest.mark.filterwarnings("ignore:At least one input physics is a DecomposablePhysics")  # composing: expected
def test_nested_pigdm_restores_through_deepinvs_mri(embedded, digits):
    op = from_deepinv(real_mri(), input_shape=(1, 32, 32))
    assert isinstance(op, DeepinvLinearOperator)  # a composition: H, Ht and conjugate gradients
    clean = 2 * digits[:2] - 1
    y = op.H(clean) + 0.02 * randn(2, *op.measurement_shape, seed=1)
    # the default measurement start: a real image's spectrum is conjugate-symmetric, so H Hᵀ is singular and
    # a noisy y leaves its range; H⁺y (least squares) still exists
    run = solvers.nested(embedded, inner="pigdm", outer_steps=4, inner_steps=6, y=y, op=op, sigma_y=0.02,
                         generator=torch.Generator().manual_seed(1))
    residuals = torch.stack([(op.H(preview.x0) - y).flatten(1).norm(dim=1) for preview in run])  # (previews, B)
    assert torch.equal(residuals.argmin(dim=0), torch.tensor([3, 3]))  # the last preview is the most consistent
    assert (residuals[-1] < 0.5 * residuals[0]).all()
    other_digits = (op.H(2 * digits[2:16] - 1)[:, None] - y).flatten(2).norm(dim=2)  # draws from the data
    assert residuals[-1].max() < 0.25 * other_digits.min()
    assert (residuals[-1] < 1.7 * (op.H(clean) - y).flatten(1).norm(dim=1)).all()  # near the noise floor
    error = (run.latest.x0 - clean).square().mean()
    assert error < 0.05 * (op.H_pinv(y) - clean).square().mean()  # measured: 0.003
