"""ΠGDM (Song, Vahdat, Mardani, Kautz 2023): pseudoinverse guidance added to DDIM, for linear H.

With p(x₀ | x_t) ≈ N(x̂₀, r_t² I), r_t² = 1 − ᾱ_t, the measurement is y | x_t ≈ N(H x̂₀, r_t² H Hᵀ + σ_y² I)
and the guidance is the vector-Jacobian product through the network
  g = (∂x̂₀/∂x_t)ᵀ Hᵀ (r_t² H Hᵀ + σ_y² I)⁻¹ (y − H x̂₀) ≈ ∇_{x_t} log p(y | x_t).
Adding g to the model's score −ε̂/√(1−ᾱ_t) moves x̂₀ by (1−ᾱ_t)/√ᾱ_t · g and ε̂ by −√(1−ᾱ_t) · g; the DDIM
step (η) is then taken from the guided pair. With an SVD, Hᵀ(r² H Hᵀ + σ_y² I)⁻¹ = V diag(s/(r² s² + σ_y²)) Uᵀ;
an operator with only H and Ht gets (r² H Hᵀ + σ_y² I)⁻¹ by conjugate gradients.
"""
from __future__ import annotations

import math

import torch

from degradations.linalg import conjugate_gradient

from .common import alpha_bar, check_timesteps, ddim_step, denoise, has_svd, noise_drawer, report, with_next


def pigdm(model, y, op, sigma_y, timesteps, eta: float = 1.0, x_T=None, noise=None, generator=None, callback=None,
          cond=None, cg_iterations: int = 100):
    """Restore x₀ from y = H x₀ + σ_y n with ΠGDM on DDIM(η); return the guided x̂₀ at t = 0.

    `op` needs H and Ht (and input_shape when x_T is None); with the SVD protocol the inverse is in closed
    form, else `cg_iterations` conjugate-gradient steps per model call. x_T is the state at timesteps[0]
    (None: standard normal noise). Exactly len(timesteps) model calls, each with one backward pass through
    the network (autograd is on only there); callback(info) after each (x0: the unguided x̂₀).
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
    steps = check_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    if has_svd(op):
        back_project = _svd_back_projection(op, sigma_y)
    else:
        back_project = _cg_back_projection(op, sigma_y, cg_iterations)
    x = draw((y.shape[0], *op.input_shape), y) if x_T is None else x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps, _, a, x0 = denoise(model, x_in, t, cond, nfe, None)
            direction = back_project(y - op.H(x0.detach()), 1 - a)
            (g,) = torch.autograd.grad(x0, x_in, direction)
        eps, x0 = eps.detach(), x0.detach()
        report(callback, nfe, t, x, x0)
        x0_guided = x0 + (1 - a) / a.sqrt() * g
        eps_guided = eps - (1 - a).sqrt() * g
        x = ddim_step(x0_guided, eps_guided, a, alpha_bar(model, t_next, x), eta, draw)
    return x


def _svd_back_projection(op, sigma_y):
    """residual, r² → Hᵀ (r² H Hᵀ + σ_y² I)⁻¹ residual = V pad(s/(r² s² + σ_y²) ⊙ Uᵀ residual)."""
    def apply(residual, r2):
        s = op.singulars().to(residual.device, residual.dtype)
        w = s / (r2 * s**2 + sigma_y**2) * op.Ut(residual)
        return op.V(torch.nn.functional.pad(w, (0, math.prod(op.input_shape) - s.numel())))
    return apply


def _cg_back_projection(op, sigma_y, iterations):
    """The same by conjugate gradients on (r² H Hᵀ + σ_y² I) w = residual, then Hᵀ w."""
    def apply(residual, r2):
        w = conjugate_gradient(lambda u: r2 * op.H(op.Ht(u)) + sigma_y**2 * u, residual, iterations)
        return op.Ht(w)
    return apply
