"""ddrm(noise_scale=1/√2) is DeepInverse 0.5.0's DDRM: the same trajectory given the same standard normals.

deepinv's DDRM (deepinv/sampling/diffusion.py) draws one B×D vector per step from torch's global generator
and multiplies it by 1/√2; ipsolve draws z (B×D), z' (less noisy coordinates) and z'' (B×k) per step. The
test replays deepinv's draws in ipsolve's order (z = d, z' = d on the less noisy coordinates, z'' = d's
first k) on an exact Gaussian prior, where `as_denoiser` is exact on the grid. One more difference is not
an option: deepinv centres its initial draw on the unobserved coordinates at 0 in its [0, 1] units (black),
ipsolve (as the authors' code) at 0 in model units (gray); the test starts ipsolve from deepinv's start."""
import math

import pytest
import torch

import degradations
import solvers
from solvers.ddrm import NOISE_SCALE_DEEPINV
from _toy_ops import random_gaussian_prior

dinv = pytest.importorskip("deepinv")
from ipsolve.interop.deepinv import as_denoiser, grid_sigmas, to_deepinv  # noqa: E402  (needs deepinv)

SIGMA_Y = 0.1  # model units


def replayed(draws, op, model, grid, start=False):
    """noise(shape) for ipsolve's ddrm giving deepinv's draws: the initialisation's, then per step
    z = d, z' = d[:, :k] on the coordinates with s σ_{t'} < σ_y, z'' = d[:, :k] (the last step, to t = 0,
    multiplies its draws by 0); start: the initialisation's draw first."""
    s, k = op.singulars().to(torch.float64), op.rank
    a = model.alphas_cumprod.to(torch.float64)
    queue = [draws[0]] if start else []
    for step, t_next in enumerate([*grid[1:], -1], start=1):
        d = draws[step] if step < len(draws) else torch.zeros_like(draws[0])
        sigma_next = 0.0 if t_next < 0 else ((1 - a[t_next]) / a[t_next]).sqrt()
        queue += [d, d[:, :k][:, s * sigma_next < SIGMA_Y], d[:, :k]]

    def noise(shape):
        z = queue.pop(0)
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z
    return noise


def deepinvs_start(model, y, op, t, draw):
    """DDRM's y-aware start at t from the draw, with the unobserved coordinates centred as deepinv's are: at
    the spectral coefficients of a black image (−1 in model units), −Vᵀ1 there, instead of at 0."""
    x_T = solvers.ddrm_init(model, y, op, SIGMA_Y, t, noise=lambda shape: draw)
    unobserved = torch.arange(op.dim) >= op.rank
    black = -op.Vt(torch.ones_like(x_T)) * unobserved
    return x_T + model.alphas_cumprod[t].sqrt() * op.V(black)


# deno and sr4 have no unobserved coordinate where a black image differs from gray (sr4's block means keep
# the constant image): there ipsolve's own start is deepinv's, and the option scales its draw too.
@pytest.mark.parametrize("task, own_start", [("deno", True), ("sr4", True), ("inp", False)])
def test_noise_scale_of_deepinv_is_deepinvs_ddrm(task, own_start):
    generator = torch.Generator().manual_seed(7)
    model = random_gaussian_prior((1, 8, 8), generator)
    op = degradations.make(task, channels=1, image_size=(8, 8), seed=2)
    clean = model.sample(3, generator=generator)
    y = op.H(clean) + SIGMA_Y * torch.randn(op.H(clean).shape, generator=generator, dtype=torch.float64)
    grid = solvers.plain_ddrm_timesteps(10)
    physics = to_deepinv(op, sigma_y=SIGMA_Y, dtype=torch.float64)
    y_pixel = (y + op.H(torch.ones_like(clean))) / 2
    sigmas = grid_sigmas(model.alphas_cumprod)[grid].numpy()
    with torch.random.fork_rng():  # deepinv draws from torch's global generator; eps=0: no guard on 1/s
        torch.manual_seed(11)
        theirs = dinv.sampling.DDRM(as_denoiser(model), sigmas=sigmas, eta=0.85, etab=1.0, eps=0.0)(y_pixel, physics)
        torch.manual_seed(11)
        draws = [torch.randn(3, 64, dtype=torch.float64) for _ in grid]
    x_T = None if own_start else deepinvs_start(model, y, op, grid[0], NOISE_SCALE_DEEPINV * draws[0])
    ours = solvers.ddrm(model, y, op, SIGMA_Y, grid, x_T=x_T, noise=replayed(draws, op, model, grid, own_start),
                        noise_scale=NOISE_SCALE_DEEPINV)
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=0, atol=1e-6)
    # the published scale (1) is another trajectory: the option is what makes the two agree
    published = solvers.ddrm(model, y, op, SIGMA_Y, grid, x_T=x_T, noise=replayed(draws, op, model, grid, own_start))
    assert ((published + 1) / 2 - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_noise_scale_out_of_range_is_refused(value):
    op = degradations.make("deno", channels=1, image_size=(8, 8))
    model = random_gaussian_prior((1, 8, 8), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^noise_scale must lie in \[0, 1\]"):
        solvers.ddrm(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64), op, SIGMA_Y, [500, 0], noise_scale=value)
