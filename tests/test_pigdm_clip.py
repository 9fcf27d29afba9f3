"""pigdm(weight="score", safeguard=False, clip_x0=…, r2=…, guidance_scale=…) is DeepInverse 0.5.0's ΠGDM draw
for draw.

deepinv's ΠGDM (`PiGDMDataFidelity` in `PosteriorDiffusion` on its VP SDE, `DDIMSolver(eta)`) adds
λ Jᵀ Hᵀ(r² H Hᵀ + σ_y² I)⁻¹(y − H x̂₀) to the model's score (ipsolve's weight "score", λ its guidance_scale),
with x̂₀ clamped to [0, 1] when clip=(0, 1): in the residual and, through the score it returns, in the DDIM
step; the Jacobian is the denoiser's own. Its r² is σ²/(1 + σ²) of its [0, 1] units, 4(1 − ᾱ)/(1 + 3ᾱ) in model
units (ipsolve's r2="deepinv"), where ipsolve's default r2="paper" is 1 − ᾱ (the same as σ → 0, 4× at ᾱ → 0):
the clip test hands deepinv's `solve_inverse` ipsolve's r² (one scalar, `IpsolvesCovariance`), the r2 test
runs deepinv unmodified. What differs besides: (1) deepinv's grid is its SDE's times linspace(1, 0, n + 1):
the exact Gaussian prior here is given those ᾱ as its schedule, so both run the same ᾱ; (2) its start is
√(1 − ᾱ_T) z, given to ipsolve as x_T; (3) it calls the denoiser in float32 (ipsolve's solver runs in float64
here)."""
import pytest
import torch

import degradations
import solvers
from _toy_ops import random_gaussian_prior

dinv = pytest.importorskip("deepinv")
from ipsolve.interop.deepinv import as_denoiser, to_deepinv  # noqa: E402  (needs deepinv)

SIGMA_Y = 0.1  # model units
STEPS = 10
SEED = 11


class IpsolvesCovariance(dinv.sampling.PiGDMDataFidelity):
    """deepinv's ΠGDM with ipsolve's r² = 1 − ᾱ: from deepinv's r² = σ²/(1 + σ²) ([0, 1] units, σ = ½ √((1−ᾱ)/ᾱ)),
    (1 − ᾱ)/4 = σ²/(1 + 4σ²) in the same units."""

    def solve_inverse(self, physics, u, r_t2, sigma_y):
        s2 = r_t2 / (1 - r_t2)
        return super().solve_inverse(physics, u, s2 / (1 + 4 * s2), sigma_y)


def deepinvs_pigdm(model, y_pixel, physics, times, fidelity):
    """deepinv's ΠGDM on DDIM(η = 1) over `times`, as scripts/bench_vs_deepinv.py runs it."""
    solver = dinv.sampling.DDIMSolver(timesteps=times, eta=1.0, rng=torch.Generator())
    sampler = dinv.sampling.PosteriorDiffusion(data_fidelity=fidelity, denoiser=as_denoiser(model),
                                               sde=dinv.sampling.VariancePreservingDiffusion(), solver=solver)
    return sampler(y_pixel, physics, seed=SEED)


def replayed(draws):
    """noise(shape) giving deepinv's per-step draws in order."""
    queue = list(draws)

    def noise(shape):
        z = queue.pop(0)
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z
    return noise


def problem(task):
    """(ours, theirs): ipsolve's ΠGDM (weight "score", no safeguard) and deepinv's with a given data fidelity,
    on a Gaussian prior twice narrower than the images (x̂₀ leaves [−1, 1]), from the same draws; both in [0, 1]."""
    times = torch.linspace(1, 0, STEPS + 1, dtype=torch.float64)
    a = dinv.sampling.VariancePreservingDiffusion().scale_t(times[:-1]) ** 2  # ᾱ of the evaluated times
    generator = torch.Generator().manual_seed(7)
    model = random_gaussian_prior((1, 8, 8), generator, alphas_cumprod=a.flip(0))  # timestep k: times[-2 - k]
    clean = 2 * model.sample(3, generator=generator)  # twice the prior's spread: x̂₀ leaves [−1, 1]
    op = degradations.make(task, channels=1, image_size=(8, 8), seed=2)
    y = op.H(clean) + SIGMA_Y * torch.randn(op.H(clean).shape, generator=generator, dtype=torch.float64)
    physics = to_deepinv(op, sigma_y=SIGMA_Y, dtype=torch.float64)
    y_pixel = (y + op.H(torch.ones_like(clean))) / 2
    draws_from = torch.Generator().manual_seed(SEED)  # deepinv's: x_init's, then one per noisy step
    draws = [torch.randn(clean.shape, generator=draws_from, dtype=torch.float64) for _ in range(STEPS)]
    grid = list(range(STEPS - 1, -1, -1))

    def ours(**options):
        return (solvers.pigdm(model, y, op, SIGMA_Y, grid, eta=1.0, x_T=(1 - a[0]).sqrt() * draws[0],
                              noise=replayed(draws[1:]), weight="score", safeguard=False, **options) + 1) / 2

    def theirs(fidelity):
        return deepinvs_pigdm(model, y_pixel, physics, times, fidelity)
    return ours, theirs


@pytest.mark.parametrize("task", ["deno", "inp"])
def test_clip_x0_is_deepinvs_clamped_pigdm_draw_for_draw(task):
    ours, theirs = problem(task)
    clipped = ours(clip_x0=True)
    deepinvs = theirs(IpsolvesCovariance(clip=(0, 1)))
    torch.testing.assert_close(clipped, deepinvs, rtol=0, atol=1e-6)
    # off, it is deepinv's ΠGDM without clip; the clamp mattered
    unclipped = ours(clip_x0=False)
    torch.testing.assert_close(unclipped, theirs(IpsolvesCovariance()), rtol=0, atol=1e-6)
    assert (clipped - unclipped).abs().max() > 1e-2
    # deepinv's own r² is another trajectory
    assert (theirs(dinv.sampling.PiGDMDataFidelity(clip=(0, 1))) - deepinvs).abs().max() > 1e-2


@pytest.mark.parametrize("task", ["deno", "inp"])
def test_deepinv_covariance_and_guidance_scale_are_deepinvs_unmodified_pigdm_draw_for_draw(task):
    """r2="deepinv" with guidance_scale λ is deepinv's own PiGDMDataFidelity(weight=λ), clamped (λ = 2, its
    tuned weight) or not (λ = 1)."""
    ours, theirs = problem(task)
    tuned = ours(clip_x0=True, r2="deepinv", guidance_scale=2.0)
    torch.testing.assert_close(tuned, theirs(dinv.sampling.PiGDMDataFidelity(weight=2.0, clip=(0, 1))),
                               rtol=0, atol=1e-6)
    plain = ours(r2="deepinv")
    torch.testing.assert_close(plain, theirs(dinv.sampling.PiGDMDataFidelity()), rtol=0, atol=1e-6)
    # the covariance mattered: ipsolve's default r² is another trajectory
    assert (ours(guidance_scale=2.0, clip_x0=True) - tuned).abs().max() > 1e-2
