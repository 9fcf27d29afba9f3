"""DPS (Chung, Kim, Mccann, Klasky, Ye 2023): diffusion posterior sampling for any differentiable forward A.

Each step is the ancestral DDPM step from (x_t, x̂₀) minus ζ ∇_{x_t} ‖y − A(x̂₀(x_t))‖₂, the gradient of the
residual's norm (not its square) taken through the network, per sample. That is the released code's
normalised step: the paper's ζ_t ∇‖y − A(x̂₀)‖² with ζ_t = ζ / (2‖y − A(x̂₀)‖), ζ ≈ 1 for SR and inpainting.

Step schedules (how ζ is spent along the grid):
* "constant": ζ at every step, as published — meant for the 1000-step grid; on a grid of few steps
  it corrects far less in all.
* "beta": ζ_t = ζ · β(t→t') / β_t, β(t→t') = 1 − ᾱ_t/ᾱ_{t'} the β of the grid's step and β_t = 1 − ᾱ_t/ᾱ_{t−1}
  the training schedule's at t. The ancestral step adds a score with the weight β(t→t')/√(1−β(t→t')), so
  published DPS at ζ on the 1000-step grid is guidance of strength ∝ ζ/β_t; this keeps that strength on any
  grid. On the 1000-step grid the factor is 1 (the published ζ); a step spanning k training steps gets ≈ k×.
"""
from __future__ import annotations

import torch

from .common import alpha_bar, check_timesteps, denoise, divergence_checked, noise_drawer, report, with_next
from .ddpm import ancestral_step

STEP_SCHEDULES = ("constant", "beta")


@divergence_checked(lambda options: f"lower the step size (it is {options['step_size']:g})")
def dps(model, y, forward, timesteps, step_size: float = 1.0, x_T=None, noise=None, generator=None, callback=None,
        cond=None, clip_x0: bool = True, step_schedule: str = "constant"):
    """Restore x₀ from y = A(x₀) + noise with DPS; return x at t = 0 (x̂₀ of the last call, guided).

    forward: an operator (its .H is A) or any differentiable callable images → measurements. x_T is the
    state at timesteps[0] (None: standard normal noise, shaped by forward.input_shape). Ancestral steps use
    the model's learned variance when it has one, else β̃ (fixed small). Exactly len(timesteps) model
    calls, each with one backward pass through the network; callback(info) after each (x0: unguided x̂₀,
    clamped with clip_x0).
    clip_x0: clamp x̂₀ to [−1, 1] (the official default, `clip_denoised`): the clamped x̂₀ enters both the
    ancestral step and the measurement residual, the gradient going through the clamp.
    step_schedule: "constant" (ζ = step_size every step) or "beta" (ζ_t = step_size · β(t→t')/β_t; module doc).
    """
    if step_size < 0:
        raise ValueError(f"step_size must be non-negative, got {step_size}")
    if step_schedule not in STEP_SCHEDULES:
        raise ValueError(f"step_schedule {step_schedule!r} is not one of {', '.join(STEP_SCHEDULES)}")
    apply = forward.H if callable(getattr(forward, "H", None)) else forward
    if not callable(apply):
        raise ValueError(f"forward must be callable or an operator with .H, got {type(forward).__name__}")
    steps = check_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    variance = "learned" if getattr(model, "learned_sigma", False) else "fixedsmall"
    if x_T is None:
        if not hasattr(forward, "input_shape"):
            raise ValueError("dps needs x_T when forward does not say its input_shape")
        x_T = draw((y.shape[0], *forward.input_shape), y)
    x = x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        v, a, x0, distance, grad = measurement_gradient(model, x, t, y, apply, cond, nfe, clip_x0)
        report(callback, nfe, t, x, x0, distance=distance)
        a_next = alpha_bar(model, t_next, x)
        zeta = step_size * (step_factor(model, t, t_next, x) if step_schedule == "beta" else 1)
        x = ancestral_step(x, x0, a, a_next, variance, v, draw) - zeta * grad
    return x


def step_factor(model, t: int, t_next: int, like):
    """β(t→t')/β_t: the β of the grid's step from t to t' over the training schedule's β at t (1 when t' = t − 1)."""
    a = alpha_bar(model, t, like)
    return (1 - a / alpha_bar(model, t_next, like)) / (1 - a / alpha_bar(model, t - 1, like))


def measurement_gradient(model, x, t: int, y, apply, cond=None, nfe: int = 1, clip_x0: bool = False):
    """One model call at t with autograd on → (v, ᾱ_t, x̂₀, ‖y − A(x̂₀)‖ per sample, its gradient in
    x_t), all detached: the guidance of one DPS step (v: learned-variance channels or None; x̂₀ clamped to
    [−1, 1] with clip_x0)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        _, v, a, x0 = denoise(model, x_in, t, cond, nfe, None)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        distance = (y - apply(x0)).reshape(y.shape[0], -1).norm(dim=1)
        (grad,) = torch.autograd.grad(distance.sum(), x_in)
    return None if v is None else v.detach(), a, x0.detach(), distance.detach(), grad
