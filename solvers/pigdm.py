"""ΠGDM (Song, Vahdat, Mardani, Kautz 2023): pseudoinverse guidance added to DDIM, for linear H.

With p(x₀ | x_t) ≈ N(x̂₀, r_t² I), r_t² = 1 − ᾱ_t, the measurement is y | x_t ≈ N(H x̂₀, r_t² H Hᵀ + σ_y² I)
and the guidance is the vector-Jacobian product through the network
  g = (∂x̂₀/∂x_t)ᵀ Hᵀ (r_t² H Hᵀ + σ_y² I)⁻¹ (y − H x̂₀) ≈ ∇_{x_t} log p(y | x_t).
Adding g to the model's score −ε̂/√(1−ᾱ_t) moves x̂₀ by (1−ᾱ_t)/√ᾱ_t · g and ε̂ by −√(1−ᾱ_t) · g; the DDIM
step (η) is then taken from the guided pair.

Step safeguard (on by default, `safeguard=False` is the paper's step): the Gaussian approximation takes
Cov[x₀ | x_t] = r_t² I, but the data's variance exceeds 1 along some directions (an image's mean brightness
varies far more than one pixel), where the guided x̂₀ then overshoots y and few-step runs diverge. Each
image's x̂₀ correction Δ is scaled by min(1, ⟨r, HΔ⟩ / ‖HΔ‖²) (r = y − H x̂₀), the step along Δ that brings
H x̂₀ closest to y, never more than the full step: on unit-variance data HΔ shrinks r coordinate-wise, that
factor is ≥ 1 and the step is the paper's. With an SVD, Hᵀ(r² H Hᵀ + σ_y² I)⁻¹ = V diag(s/(r² s² + σ_y²)) Uᵀ;
an operator with only H and Ht gets (r² H Hᵀ + σ_y² I)⁻¹ by conjugate gradients.
"""
from __future__ import annotations

import math

import torch

from degradations.linalg import conjugate_gradient

from .common import alpha_bar, check_timesteps, ddim_step, denoise, has_svd, noise_drawer, report, with_next
from .common import divergence_checked


@divergence_checked(lambda options: None if options["safeguard"] else "turn the safeguard on (safeguard=True)")
def pigdm(model, y, op, sigma_y, timesteps, eta: float = 1.0, x_T=None, noise=None, generator=None, callback=None,
          cond=None, cg_iterations: int = 100, safeguard: bool = True):
    """Restore x₀ from y = H x₀ + σ_y n with ΠGDM on DDIM(η); return the guided x̂₀ at t = 0.

    `op` needs H and Ht (and input_shape when x_T is None); with the SVD protocol the inverse is in closed
    form, else `cg_iterations` conjugate-gradient steps per model call. x_T is the state at timesteps[0]
    (None: standard normal noise). safeguard: limit each correction to the step that brings H x̂₀ closest to
    y (module docstring). Exactly len(timesteps) model calls, each with one backward pass through the
    network (autograd is on only there); callback(info) after each (x0: the unguided x̂₀).
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
            residual = y - op.H(x0.detach())
            (g,) = torch.autograd.grad(x0, x_in, back_project(residual, 1 - a))
        eps, x0 = eps.detach(), x0.detach()
        report(callback, nfe, t, x, x0)
        correction = (1 - a) / a.sqrt() * g  # x̂₀'s change; ε̂ changes by −√(1−ᾱ) g = −√(ᾱ/(1−ᾱ)) · correction
        if safeguard:
            step = residual_step(residual, op.H(correction))
            correction = correction * step.reshape(-1, *[1] * (correction.dim() - 1))
        x = ddim_step(x0 + correction, eps - (a / (1 - a)).sqrt() * correction, a, alpha_bar(model, t_next, x),
                      eta, draw)
    return x


def residual_step(residual, moved):
    """Per image (B,), min(1, ⟨r, HΔ⟩ / ‖HΔ‖²) (≥ 0; 1 where HΔ = 0): the multiple c of Δ that minimises
    ‖r − c HΔ‖, capped at the full step."""
    r, m = residual.reshape(residual.shape[0], -1), moved.reshape(moved.shape[0], -1)
    along, length = (r * m).sum(1), (m * m).sum(1)
    return torch.where(length > 0, (along / torch.where(length > 0, length, 1)).clamp(0, 1), 1).to(moved.dtype)


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
