"""DDRM (Kawar et al. 2022): diffusion restoration in the spectral space of an SVD operator H = U Σ Vᵀ.

Works with x̄ = x/√ᾱ and σ_t = √((1−ᾱ_t)/ᾱ_t); each spectral coordinate i of x̄ is updated on its own,
by comparing its noise σ_{t'} with the measurement's σ_y/s_i (the three cases are in `_step`).
"""
from __future__ import annotations

import math

import torch

from .common import alpha_bar, check_timesteps, denoise, divergence_checked, noise_drawer, require_svd, with_next


NOISE_SCALE_DEEPINV = 1 / math.sqrt(2)  # `ddrm(noise_scale=...)` as DeepInverse 0.5.0's DDRM draws


class SpectralMeasurement:
    """y in the operator's spectral basis: s (k), u = Uᵀy (B, k), ȳ = u/s (B, k), and σ_y."""

    def __init__(self, y, op, sigma_y):
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
        self.op, self.sigma_y = op, float(sigma_y)
        self.s = op.singulars().to(y.device, y.dtype)
        self.u = op.Ut(y)
        positive = self.s > 0
        self.y_bar = self.u / torch.where(positive, self.s, 1) * positive
        self.k = self.s.numel()
        self.image_shape = (y.shape[0], *op.input_shape)
        self.dim = math.prod(op.input_shape)


@divergence_checked()
def ddrm(model, y, op, sigma_y, timesteps, eta: float = 0.85, eta_b: float = 1.0, x_T=None, noise=None,
         generator=None, callback=None, cond=None, noise_scale: float = 1.0):
    """Restore x₀ from y = H x₀ + σ_y n; return x̂₀ at t = 0 (B, C, H, W), model space, unclipped.

    x_T is the state at timesteps[0] (None: DDRM's y-aware initialisation there). Random draws come from
    `noise(shape)` when given (torch.zeros gives the mean path), else from `generator`, in the reference
    order: per step z (B×D), z' (B×|less noisy|), z'' (B×k). Exactly len(timesteps) model calls;
    callback(info) after each (info: nfe, t, x, x0).
    noise_scale: multiplies every draw (the initialisation's and each step's). 1 is DDRM as published
    and as its authors' code; DeepInverse 0.5.0's DDRM draws at 1/√2 (NOISE_SCALE_DEEPINV), which keeps
    the state less noisy than the σ_t the model is told: closer to the posterior mean, higher PSNR, less
    diverse samples (docs/vs_deepinv.md).
    """
    for name, value in (("eta", eta), ("eta_b", eta_b), ("noise_scale", noise_scale)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    require_svd(op, "ddrm")
    steps = check_timesteps(timesteps, model)
    draw = _scaled(noise_drawer(noise, generator), noise_scale)
    meas = SpectralMeasurement(y, op, sigma_y)
    x = _y_aware_init(meas, alpha_bar(model, steps[0], y), draw) if x_T is None else x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        eps, _, _, x0 = denoise(model, x, t, cond, nfe, callback)
        a_next = alpha_bar(model, t_next, x)
        x_bar = _step(meas, op.Vt(x0), op.Vt(eps), ((1 - a_next) / a_next).sqrt(), eta, eta_b, draw)
        x = a_next.sqrt() * op.V(x_bar)
    return x


def _scaled(draw, scale):
    if scale == 1:
        return draw
    return lambda shape, like: scale * draw(shape, like)


def ddrm_init(model, y, op, sigma_y, t: int, noise=None, generator=None):
    """DDRM's y-aware initialisation x_t ~ q(x_t | y) at timestep t (B, C, H, W).

    On coordinates with s_i σ_t > σ_y: x̄_i = ȳ_i + √(σ_t² − σ_y²/s_i²) n_i; elsewhere σ_t n_i;
    x_t = √ᾱ_t V x̄ (one draw of B×D normals).
    """
    check_timesteps([t], model)
    return _y_aware_init(SpectralMeasurement(y, op, sigma_y), alpha_bar(model, t, y), noise_drawer(noise, generator))


def _y_aware_init(meas, a, draw):
    sigma = ((1 - a) / a).sqrt()
    n = draw((meas.image_shape[0], meas.dim), meas.u)
    x_bar = sigma * n
    informed = meas.s * sigma > meas.sigma_y
    head = x_bar[:, :meas.k]
    spread = (sigma**2 - meas.sigma_y**2 / meas.s[informed] ** 2).clamp_min(0).sqrt()
    head[:, informed] = meas.y_bar[:, informed] + spread * n[:, :meas.k][:, informed]
    return a.sqrt() * meas.op.V(x_bar)


def _step(meas, c, e, sigma_next, eta, eta_b, draw):
    """x̄_{t'} in spectral coordinates from c = Vᵀx̂₀ and e = Vᵀε̂: per coordinate, missing (i ≥ k),
    less noisy than y (s_i σ_{t'} < σ_y) or noisier (s_i σ_{t'} > σ_y)."""
    s, k, sigma_y = meas.s, meas.k, meas.sigma_y
    less_noisy = s * sigma_next < sigma_y
    noisier = s * sigma_next > sigma_y
    z = draw(c.shape, c)
    z_less = draw((c.shape[0], int(less_noisy.sum())), c)
    z_more = draw((c.shape[0], k), c)
    kept = sigma_next * math.sqrt(1 - eta**2)
    x_bar = c + kept * e + eta * sigma_next * z  # missing coordinates (and those with s_i σ_{t'} = σ_y)
    head, c_head = x_bar[:, :k], c[:, :k]
    if less_noisy.any():
        residual = (meas.u[:, less_noisy] - s[less_noisy] * c_head[:, less_noisy]) / sigma_y
        head[:, less_noisy] = c_head[:, less_noisy] + kept * residual + eta * sigma_next * z_less
    spread = (sigma_next**2 - eta_b**2 * sigma_y**2 / s[noisier] ** 2).clamp_min(0).sqrt()
    head[:, noisier] = eta_b * meas.y_bar[:, noisier] + (1 - eta_b) * c_head[:, noisier] + spread * z_more[:, noisier]
    return x_bar

