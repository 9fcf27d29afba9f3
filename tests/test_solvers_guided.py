"""ΠGDM and DPS: exactness on Gaussian priors (closed forms), the conjugate-gradient path, call counts,
autograd confinement, dtype, and DPS on the nonlinear saturating sensor."""
import math

import pytest
import torch

import degradations
import solvers
from _toy_ops import (DenseOperator, Recorder, dps_step_by_hand, gaussian_problem, linear_alphas_cumprod,
                      random_gaussian_prior)
from ipsolve.models import GaussianPrior

F64 = torch.float64


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


class HOnly:
    """An operator known only through H and Ht (hides any SVD)."""

    def __init__(self, op):
        self.H, self.input_shape, self.name = op.H, op.input_shape, "h-only"
        self.Ht = op.Ht if hasattr(op, "Ht") else (  # a DenseOperator: its matrix
            lambda y: (y.reshape(y.shape[0], -1) @ op.matrix).reshape(y.shape[0], *op.input_shape))


def standard_normal_prior(shape):
    dim = math.prod(shape)
    return GaussianPrior(torch.zeros(shape, dtype=F64), torch.eye(dim, dtype=F64), linear_alphas_cumprod())


def exact_posterior_model(prior, y, op, sigma_y):
    """The diffusion model of p(x₀ | y) itself: its ε̂ is −√(1−ᾱ) ∇ log p(x_t | y)."""
    post = prior.posterior(y, op, sigma_y)
    return GaussianPrior(post.mean[0], post.covariance[0], prior.alphas_cumprod)


@pytest.mark.parametrize("name, shape, sigma_y, eta", [("sr2", (1, 4, 4), 0.1, 0.0), ("sr2", (1, 4, 4), 0.0, 0.0),
                                                     ("color", (3, 2, 2), 0.2, 1.0), ("inp", (1, 4, 4), 0.05, 0.5),
                                                     ("deno", (1, 2, 3), 0.3, None)])
def test_pigdm_on_a_standard_normal_prior_is_ddim_on_the_exact_posterior(name, shape, sigma_y, eta):
    """For N(0, I), x̂₀ = √ᾱ x_t and Cov[x₀ | x_t] = (1−ᾱ) I exactly, so the guidance is ∇ log p(y | x_t)
    and each step of the score weight is the DDIM step of the exact conditional model p(x₀ | y), whatever
    the grid (its default safeguard never acts there)."""
    prior = standard_normal_prior(shape)
    op = degradations.make(name, channels=shape[0], image_size=shape[1:], seed=2)
    y = op.H(torch.randn(1, *shape, generator=generator(1), dtype=F64)) * 0.7
    x_T = torch.randn(1, *shape, generator=generator(2), dtype=F64)
    grid = [900, 610, 333, 80, 7, 0]
    given = {} if eta is None else {"eta": eta}  # None: ΠGDM's default, η = 1
    out = solvers.pigdm(prior, y, op, sigma_y, grid, x_T=x_T, generator=generator(3), weight="score", **given)
    expected = solvers.ddim(exact_posterior_model(prior, y, op, sigma_y), x_T, grid, eta=1.0 if eta is None else eta,
                            generator=generator(3))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["sr2", "rank-deficient"])
def test_pigdm_conjugate_gradients_equal_the_svd_path(kind):
    """Also for a dense H of rank 4 < m = 6, where (r² H Hᵀ + σ_y² I)⁻¹ has a part off U's columns that
    Hᵀ annihilates."""
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    if kind == "rank-deficient":
        left, right = (torch.randn(*shape, generator=generator(20), dtype=F64) for shape in ((6, 4), (4, 16)))
        op = DenseOperator(left @ right / 4, (1, 4, 4))
        y = op.H(prior.sample(2, generator(21))) + 0.1 * torch.randn(2, 6, generator=generator(22), dtype=F64)
    grid = solvers.ddrm_timesteps(10)
    x_T = torch.randn(2, 1, 4, 4, generator=generator(4), dtype=F64)
    via_svd = solvers.pigdm(prior, y, op, 0.1, grid, x_T=x_T, generator=generator(5))
    via_cg = solvers.pigdm(prior, y, HOnly(op), 0.1, grid, x_T=x_T, generator=generator(5))
    torch.testing.assert_close(via_cg, via_svd, rtol=1e-9, atol=1e-9)


def test_pigdm_on_a_composition_equals_its_dense_svd():
    """deblur ∘ mask has no SVD (conjugate gradients); its dense copy has one (closed form)."""
    prior = random_gaussian_prior((1, 4, 4), generator(6))
    op = degradations.make("deblur_uni+inp", channels=1, image_size=(4, 4), seed=1, parts=[
        {"name": "deblur_uni", "channels": 1, "image_size": [4, 4], "width": 3},
        {"name": "inp", "channels": 1, "image_size": [4, 4], "seed": 1}])
    y = op.H(prior.sample(1, generator(7))) + 0.05 * torch.randn(1, 1, 8, generator=generator(8), dtype=F64)
    x_T = torch.randn(1, 1, 4, 4, generator=generator(9), dtype=F64)
    grid = solvers.ddrm_timesteps(8)
    out = solvers.pigdm(prior, y, op, 0.05, grid, x_T=x_T, noise=torch.zeros)
    expected = solvers.pigdm(prior, y.reshape(1, -1), DenseOperator.copy_of(op), 0.05, grid, x_T=x_T,
                             noise=torch.zeros)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("variance, safeguard, scale", [(20.0, True, 1.0), (20.0, True, 0.02), (20.0, False, 1.0),
                                                     (0.5, True, 1.0), (0.5, True, 0.02)])
def test_pigdm_one_step_denoising_by_hand(variance, safeguard, scale):
    """Denoising with the prior N(0, λ I): x̂₀ = m x_t with m = √ᾱ λ/(ᾱλ + 1 − ᾱ), Cov[x₀ | x_t] = c I with
    c = λ(1−ᾱ)/(ᾱλ + 1 − ᾱ), so ΠGDM's correction is c/(r² + σ_y²) (y − x̂₀), r² = 1 − ᾱ. For λ = 20 that
    factor exceeds 1 (the guided x̂₀ passes y) and the safeguard cuts it to exactly 1; for λ = 0.5 it is
    below 1 and the safeguard leaves the paper's step (also for small residuals, `scale`; the safeguard is
    the score weight's default). A one-step grid ends at ᾱ = 1: the output is the guided x̂₀."""
    shape, t, sigma_y = (1, 2, 3), 500, 0.1
    prior = GaussianPrior(torch.zeros(shape, dtype=F64), variance * torch.eye(6, dtype=F64), linear_alphas_cumprod())
    op = degradations.make("deno", channels=1, image_size=shape[1:])
    x_t = scale * torch.randn(2, *shape, generator=generator(12), dtype=F64)
    y = scale * torch.randn(2, *shape, generator=generator(13), dtype=F64)
    a = prior.alphas_cumprod[t]
    x0 = a.sqrt() * variance / (a * variance + 1 - a) * x_t.reshape(2, 6)
    factor = variance * (1 - a) / (a * variance + 1 - a) / (1 - a + sigma_y**2)
    assert (factor > 1) == (variance > 1)
    if safeguard:
        factor = min(factor, 1.0)
    given = {} if safeguard else {"safeguard": False}
    out = solvers.pigdm(prior, y, op, sigma_y, [t], x_T=x_t, noise=torch.zeros, weight="score", **given)
    torch.testing.assert_close(out.reshape(2, 6), x0 + factor * (y.reshape(2, 6) - x0), rtol=1e-10, atol=1e-10)


class LinearDenoiser:
    """An ε-model whose x̂₀ is M x_t for a fixed matrix M (per flattened image): ε = (x − √ᾱ M x)/√(1−ᾱ)."""

    def __init__(self, matrix):
        self.matrix, self.alphas_cumprod = matrix, linear_alphas_cumprod()

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].reshape(-1, 1)
        flat = x.reshape(x.shape[0], -1)
        return ((flat - a.sqrt() * flat @ self.matrix.T) / (1 - a).sqrt()).reshape(x.shape)


@pytest.mark.parametrize("kind", ["into the unobserved half", "away from y"])
def test_pigdm_safeguard_where_the_correction_cannot_bring_h_x0_closer(kind):
    """Inpainting of the first two of four pixels. With x̂₀ = P x_t, P swapping the halves, the correction
    Δ ∝ Pᵀ Hᵀ w lies in the unobserved half: H Δ = 0 and the full step is kept (Δ moves only what y does
    not see). With x̂₀ = −x_t, ⟨r, H Δ⟩ < 0 (the correction moves H x̂₀ away from y): no step. By hand:
    x̂₀ = M x_t, r = y − H x̂₀, Δ = (1−ᾱ)/√ᾱ Mᵀ Hᵀ r/(r² + σ_y²) with r² = 1 − ᾱ, output x̂₀ + c Δ."""
    swap = torch.tensor([[0., 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=F64)
    matrix = swap if kind == "into the unobserved half" else -torch.eye(4, dtype=F64)
    op = degradations.make("inp_mask", channels=1, image_size=(2, 2), mask=torch.tensor([[True, True], [False, False]]))
    h = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0]], dtype=F64)
    probe = torch.tensor([[1., 2, 3, 4]], dtype=F64)
    assert torch.equal(op.H(probe.reshape(1, 1, 2, 2)).reshape(1, -1), probe @ h.T)  # H keeps pixels 0 and 1
    x_t = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=F64)
    y = torch.tensor([[0.7, 0.4]], dtype=F64)
    t, sigma_y = 400, 0.1
    a = linear_alphas_cumprod()[t]
    x0 = x_t @ matrix.T
    correction = (1 - a) / a.sqrt() * (y - x0 @ h.T) @ h @ matrix / (1 - a + sigma_y**2)
    step = 1.0 if kind == "into the unobserved half" else 0.0
    assert (correction @ h.T).abs().max() == 0 if step == 1 else ((y - x0 @ h.T) * (correction @ h.T)).sum() < 0
    measured = y.reshape(op.H(probe.reshape(1, 1, 2, 2)).shape)
    out = solvers.pigdm(LinearDenoiser(matrix), measured, op, sigma_y, [t], x_T=x_t.reshape(1, 1, 2, 2),
                        noise=torch.zeros, weight="score", safeguard=True)
    torch.testing.assert_close(out.reshape(1, 4), x0 + step * correction, rtol=1e-12, atol=1e-12)


def test_pigdm_passes_cond_to_every_call_reports_each_and_follows_float32():
    prior, op, y = gaussian_problem("sr2", 0.1)
    model, label, infos = Recorder(prior), torch.tensor([3]), []
    x_T = torch.randn(1, 1, 4, 4, generator=generator(2), dtype=F64)
    out64 = solvers.pigdm(model, y, op, 0.1, [700, 300, 0], x_T=x_T, cond=label, noise=torch.zeros,
                          callback=infos.append)
    assert len(model.calls) == 3 and all(cond is label for _, cond in model.calls)
    assert [(i["t"], i["nfe"]) for i in infos] == [(700, 1), (300, 2), (0, 3)]
    out32 = solvers.pigdm(Float32(prior), y.float(), op, 0.1, [700, 300, 0], x_T=x_T.float(), noise=torch.zeros)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, out64.float(), rtol=1e-4, atol=1e-4)


class Float32:
    """The prior's ε evaluated in float64 and handed back in float32: a float32 model."""

    def __init__(self, prior):
        self.prior, self.alphas_cumprod = prior, prior.alphas_cumprod.float()

    def __call__(self, x, t):
        return self.prior(x.double(), t).float()


def test_dps_one_step_by_hand():
    """One DPS step on a Gaussian prior, where x̂₀ = μ + M (x_t − √ᾱ μ) with M = √ᾱ Σ (ᾱΣ + (1−ᾱ)I)⁻¹,
    so ∇_{x_t} ‖y − A x̂₀‖ = −Mᵀ Aᵀ r / ‖r‖; the ancestral step uses the posterior variance β̃."""
    (prior, op, y), x_t, z, unguided, grad, r = dps_step_by_hand(600, 350)
    infos = []
    solvers.dps(prior, y, op, [600, 350], step_size=0.7, x_T=x_t.reshape(1, 1, 4, 4), noise=lambda shape: z,
                callback=infos.append)
    expected = unguided - 0.7 * grad
    torch.testing.assert_close(infos[1]["x"].reshape(-1), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(infos[0]["distance"], r.norm().reshape(1), rtol=1e-10, atol=1e-10)
    infos = []  # without step_size: the default ζ = 1, i.e. 0.3 more of the same gradient
    solvers.dps(prior, y, op, [600, 350], x_T=x_t.reshape(1, 1, 4, 4), noise=lambda shape: z, callback=infos.append)
    torch.testing.assert_close(infos[1]["x"].reshape(-1), expected - 0.3 * grad, rtol=1e-10, atol=1e-10)


def test_dps_without_guidance_is_ddpm():
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    x_T = torch.randn(2, 1, 4, 4, generator=generator(12), dtype=F64)
    grid = solvers.ddrm_timesteps(10)
    out = solvers.dps(prior, y, op, grid, step_size=0.0, x_T=x_T, generator=generator(13), clip_x0=False)
    torch.testing.assert_close(out, solvers.ddpm(prior, x_T, grid, generator=generator(13)), rtol=0, atol=0)


class LearnedLargeVariance:
    """Returns [ε, v] along the channels with v = 1, the learned-variance output that means β (fixed large)."""

    learned_sigma = True

    def __init__(self, model):
        self.model, self.alphas_cumprod = model, model.alphas_cumprod

    def __call__(self, x, t):
        return torch.cat([self.model(x, t), torch.ones_like(x)], dim=1)


def test_dps_uses_the_learned_variance_of_a_model_that_has_one():
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    x_T = torch.randn(2, 1, 4, 4, generator=generator(12), dtype=F64)
    grid = solvers.ddrm_timesteps(10)
    out = solvers.dps(LearnedLargeVariance(prior), y, op, grid, step_size=0.0, x_T=x_T, generator=generator(13),
                      clip_x0=False)
    expected = solvers.ddpm(prior, x_T, grid, variance="fixedlarge", generator=generator(13))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dps_passes_cond_to_every_call_and_reports_each():
    prior, op, y = gaussian_problem("sr2", 0.1)
    model, label, infos = Recorder(prior), torch.tensor([3]), []
    solvers.dps(model, y, op, [700, 300, 0], cond=label, generator=generator(1), callback=infos.append)
    assert len(model.calls) == 3 and all(cond is label for _, cond in model.calls)
    assert [(i["t"], i["nfe"]) for i in infos] == [(700, 1), (300, 2), (0, 3)]


def test_dps_on_the_saturating_sensor_fits_the_measurement():
    """A nonlinear forward: guidance brings A(x̂₀) closer to y than unguided sampling from the same draws."""
    prior = random_gaussian_prior((1, 4, 4), generator(14))
    op = degradations.make("saturate", channels=1, image_size=(4, 4), gain=3.0)
    y = op.H(prior.sample(1, generator(15))).expand(16, -1, -1, -1)
    grid = solvers.ddrm_timesteps(50)
    x_T, misfit = torch.randn(16, 1, 4, 4, generator=generator(16), dtype=F64), {}
    for step_size in (0.0, 0.5):
        out = solvers.dps(prior, y, op.H, grid, step_size=step_size, x_T=x_T, generator=generator(17))
        misfit[step_size] = (y - op.H(out)).reshape(16, -1).norm(dim=1).mean()
    assert misfit[0.5] < 0.5 * misfit[0.0]


@pytest.mark.parametrize("solver", ["pigdm", "dps"])
def test_one_call_per_step_autograd_only_around_it_and_dtype(solver):
    prior, op, y = gaussian_problem("sr2", 0.1)
    seen = []

    class Watch(Recorder):
        def __call__(self, x, t, *cond):
            seen.append(torch.is_grad_enabled())
            return super().__call__(x, t, *cond)

    model, infos = Watch(prior), []
    args = (y, op, 0.1) if solver == "pigdm" else (y, op)
    with torch.no_grad():
        out = getattr(solvers, solver)(model, *args, solvers.ddrm_timesteps(10), generator=generator(),
                                       callback=infos.append)
    assert len(model.calls) == 10 and all(seen) and [i["nfe"] for i in infos] == list(range(1, 11))
    assert out.dtype == F64 and out.shape == (1, 1, 4, 4) and not out.requires_grad
    assert not any(i["x0"].requires_grad or i["x"].requires_grad for i in infos)
    out32 = getattr(solvers, solver)(prior, y.float(), *args[1:], solvers.ddrm_timesteps(5), generator=generator())
    assert out32.dtype == torch.float32


def test_eta_zero_draws_nothing_and_bad_arguments():
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    grid = solvers.ddrm_timesteps(10)
    x_T = torch.randn(2, 1, 4, 4, generator=generator(18), dtype=F64)
    first = solvers.pigdm(prior, y, op, 0.1, grid, eta=0.0, x_T=x_T, noise=torch.zeros)
    assert torch.equal(first, solvers.pigdm(prior, y, op, 0.1, grid, eta=0.0, x_T=x_T, generator=generator(1)))
    with pytest.raises(ValueError, match="eta"):
        solvers.pigdm(prior, y, op, 0.1, grid, eta=-1)
    with pytest.raises(ValueError, match="step_size"):
        solvers.dps(prior, y, op, grid, step_size=-1)
    with pytest.raises(ValueError, match="x_T"):
        solvers.dps(prior, y, op.H, grid)
