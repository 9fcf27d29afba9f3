"""ΠGDM (Song, Vahdat, Mardani, Kautz 2023): pseudoinverse guidance added to DDIM, for linear H.

With p(x₀ | x_t) ≈ N(x̂₀, r_t² I), r_t² = 1 − ᾱ_t, the measurement is y | x_t ≈ N(H x̂₀, r_t² H Hᵀ + σ_y² I).
The guidance direction is the vector-Jacobian product through the network Jᵀm, J = ∂x̂₀/∂x_t, with
  m = r_t² Hᵀ (r_t² H Hᵀ + σ_y² I)⁻¹ (y − H x̂₀)   (= H⁺y − H⁺H x̂₀ when σ_y = 0),
so Jᵀm / r_t² ≈ ∇_{x_t} log p(y | x_t). The DDIM(η) step from x_t to x_s is
  x_s = √ᾱ_s x̂₀ + c₁ z + c₂ ε̂ + w_t Jᵀm,   c₁ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_s), c₂ = √(1−ᾱ_s−c₁²),
and the sources differ only in the weight w_t (`weight`):
* "code": w_t = √ᾱ_s √ᾱ_t, the authors' released step (NVlabs/RED-diff @ 66482f2, `algos/pgdm.py` with
  `_configs/algo/pgdm.yaml`: awd True, grad_term_weight 1), whose start is `pigdm_init`;
* "paper": w_t = √ᾱ_t, Algorithm 1 of the paper as printed;
* "score": w_t = √ᾱ_s/√ᾱ_t − c₂/√(1−ᾱ_t): Jᵀm / r_t² added to the model's score and the DDIM step taken
  from the guided pair (x̂₀ and ε̂ both corrected). It is exact for a Gaussian prior N(0, I), and about
  3500× the released weight at the first of 20 steps.
Every weight is the same DDIM step from a guided x̂₀' = x̂₀ + Δ (and ε̂' = ε̂ − √(ᾱ_t/(1−ᾱ_t)) Δ), with
Δ = w_t / k_t · Jᵀm, k_t = √ᾱ_s − c₂ √(ᾱ_t/(1−ᾱ_t)) > 0; that is how the step is computed here.

Step safeguard (`safeguard`, for any weight): the Gaussian approximation takes Cov[x₀ | x_t] = r_t² I, but
the data's variance exceeds 1 along some directions (an image's mean brightness), where a large weight
makes the guided x̂₀ overshoot y and few-step runs diverge. Each image's Δ is then scaled by
min(1, ⟨r, HΔ⟩ / ‖HΔ‖²) (r = y − H x̂₀): the step along Δ that brings H x̂₀ closest to y, never more than
the full step. With an SVD, Hᵀ(r² H Hᵀ + σ_y² I)⁻¹ = V diag(s/(r² s² + σ_y²)) Uᵀ; an operator with only
H and Ht gets (r² H Hᵀ + σ_y² I)⁻¹ by conjugate gradients.

x̂₀ clamp (`clip_x0`, off by default; DeepInverse's `PiGDMDataFidelity(clip=(0, 1))`): x̂₀ clamped to [−1, 1]
is the x̂₀ of the residual r = y − H x̂₀ and of the DDIM step (ε̂ recomputed from it,
ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t)); Jᵀ stays the network's own, not through the clamp.

DeepInverse's covariance (`r2`, "paper" by default): r_t² is the posterior variance σ²/(1+σ²) of a
unit-variance prior at the VE noise level σ² = (1−ᾱ_t)/ᾱ_t, which is 1 − ᾱ_t in model units ("paper").
DeepInverse 0.5.0 evaluates the same formula in its [0, 1] image units (σ halved): in model units that is
r_t² = 4(1−ᾱ_t)/(1+3ᾱ_t) ("deepinv"; a prior of variance 4, 1 in [0, 1] units), up to 4× at ᾱ_t → 0.
Only the weight "score" takes it: there the likelihood score Jᵀ Hᵀ(r_t² H Hᵀ + σ_y² I)⁻¹ r is added to the
model's score, so r_t² enters only through the inverse (m = (1−ᾱ_t) Hᵀ(r_t² H Hᵀ + σ_y² I)⁻¹ r, the 1−ᾱ_t
being the score-to-x̂₀ factor of w_t); "code" and "paper" are steps built on r_t² = 1 − ᾱ_t and are not
changed. Guidance scale (`guidance_scale`, 1 by default): λ multiplies w_t Jᵀm, DeepInverse's `weight`
(the RED-diff code's grad_term_weight), before the safeguard.
"""
from __future__ import annotations

import math

import torch

from degradations.linalg import conjugate_gradient, least_squares

from .common import (alpha_bar, check_timesteps, ddim_step, denoise, divergence_checked, has_svd, noise_drawer,
                     report, with_next)

WEIGHTS = ("code", "paper", "score")
STARTS = ("noise", "measurement")
DEFAULT_START = "measurement"
# safeguard=None: on for the weights that diverge without it at 10–30 calls (docs/solvers_benchmark.md)
SAFEGUARD_BY_WEIGHT = {"code": False, "paper": True, "score": True}
COVARIANCES = ("paper", "deepinv")


def remedy(options) -> str | None:
    """What to try when ΠGDM diverged with these options (None: the generic advice)."""
    weight, safeguard = options["weight"], options["safeguard"]
    if not (SAFEGUARD_BY_WEIGHT[weight] if safeguard is None else safeguard):
        return "turn the safeguard on (safeguard=True)"
    if weight != "code":
        return 'use weight="code" (the released step; --weight code)'
    return None


@divergence_checked(remedy)
def pigdm(model, y, op, sigma_y, timesteps, eta: float = 1.0, x_T=None, noise=None, generator=None, callback=None,
          cond=None, cg_iterations: int = 100, weight: str = "code", safeguard: bool | None = None,
          start: str = DEFAULT_START, clip_x0: bool = False, r2: str = "paper",
          guidance_scale: float = 1.0):
    """Restore x₀ from y = H x₀ + σ_y n with ΠGDM on DDIM(η); return the guided x̂₀ at t = 0.

    `op` needs H and Ht (and input_shape when x_T is None); with the SVD protocol the inverse is in closed
    form, else `cg_iterations` conjugate-gradient steps per model call. weight: "code" (the default, the
    released step), "paper" or "score" (module docstring). safeguard: limit each correction to the step
    that brings H x̂₀ closest to y; None: on for "paper" and "score", which diverge without it at 10–30
    calls, off for "code", which does not need it and is better without. x_T is the state at
    timesteps[0]; when None, `start` says where it comes from: "measurement" (the default: `pigdm_init`,
    the released code's start) or "noise" (standard normal). clip_x0: clamp x̂₀ to [−1, 1] in the residual
    and the step (module docstring; off: the released code, which never clamps). r2: the covariance r_t²,
    "paper" (1 − ᾱ_t) or "deepinv" (4(1−ᾱ_t)/(1+3ᾱ_t), DeepInverse's; weight "score" only); guidance_scale:
    λ > 0 multiplying the guidance (DeepInverse's `weight`). Exactly len(timesteps) model calls, each with one
    backward pass through the network (autograd is on only there);
    callback(info) after each (x0: the unguided x̂₀, clamped with clip_x0).
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
    check_choice("weight", weight, WEIGHTS)
    check_choice("start", start, STARTS)
    check_choice("r2", r2, COVARIANCES)
    if r2 == "deepinv" and weight != "score":
        raise ValueError(f'r2="deepinv" needs weight="score" (DeepInverse adds the likelihood score), got {weight!r}')
    if not (math.isfinite(guidance_scale) and guidance_scale > 0):
        raise ValueError(f"guidance_scale must be a finite number > 0, got {guidance_scale}")
    safeguard = SAFEGUARD_BY_WEIGHT[weight] if safeguard is None else safeguard
    steps = check_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    back_project = back_projection(op, sigma_y, cg_iterations)
    if x_T is None:
        x_T = pigdm_start(model, y, op, steps[0], start, draw, cg_iterations)
    x = x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps, _, a, x0_net = denoise(model, x_in, t, cond, nfe, None)
            eps, x0 = clamped_pair(x, x0_net.detach(), a) if clip_x0 else (eps.detach(), x0_net.detach())
            residual = y - op.H(x0)
            m = (1 - a) * back_project(residual, covariance(r2, a))
            (guidance,) = torch.autograd.grad(x0_net, x_in, m)  # Jᵀm
        report(callback, nfe, t, x, x0)
        a_next = alpha_bar(model, t_next, x)
        correction = guidance_scale * x0_weight(weight, a, a_next, eta) * guidance  # Δ
        if safeguard:
            step = residual_step(residual, op.H(correction))
            correction = correction * step.reshape(-1, *[1] * (correction.dim() - 1))
        x = ddim_step(x0 + correction, eps - (a / (1 - a)).sqrt() * correction, a, a_next, eta, draw)
    return x


def clamped_pair(x, x0, a):
    """(ε̂, x̂₀) with x̂₀ clamped to [−1, 1] and ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t) the noise that makes them one pair."""
    x0 = x0.clamp(-1, 1)
    return (x - a.sqrt() * x0) / (1 - a).sqrt(), x0


def covariance(r2: str, a):
    """r_t² at ᾱ_t = a: "paper" 1 − ᾱ_t; "deepinv" σ²/(1+σ²) in [0, 1] units, 4(1−ᾱ_t)/(1+3ᾱ_t) in model units."""
    return 1 - a if r2 == "paper" else 4 * (1 - a) / (1 + 3 * a)


def check_choice(name: str, value: str, choices) -> None:
    """ValueError (one line) unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")


def guidance_weight(weight: str, a, a_next, eta: float):
    """w_t, the multiple of Jᵀm that the DDIM step from ᾱ_t = a to ᾱ_s = a_next adds (module docstring)."""
    if weight == "code":
        return a_next.sqrt() * a.sqrt()
    if weight == "paper":
        return a.sqrt()
    return a_next.sqrt() / a.sqrt() - ddim_c2(a, a_next, eta) / (1 - a).sqrt()


def x0_weight(weight: str, a, a_next, eta: float):
    """w_t / k_t: the multiple of Jᵀm by which x̂₀ moves for the DDIM step to add w_t Jᵀm."""
    k = a_next.sqrt() - ddim_c2(a, a_next, eta) * (a / (1 - a)).sqrt()
    return guidance_weight(weight, a, a_next, eta) / k


def ddim_c2(a, a_next, eta: float):
    """c₂ = √(1−ᾱ_s−c₁²) of the DDIM(η) step from ᾱ_t = a to ᾱ_s = a_next (as `ddim_step` computes it)."""
    c1_squared = eta**2 * ((1 - a_next) / (1 - a) * (1 - a / a_next)).clamp_min(0)
    return (1 - a_next - c1_squared).clamp_min(0).sqrt()


def pigdm_init(model, y, op, t: int, noise=None, generator=None, cg_iterations: int = 100):
    """The released code's measurement-aware start at timestep t: √ᾱ_t H⁺y + √(1−ᾱ_t) z."""
    return pigdm_start(model, y, op, t, "measurement", noise_drawer(noise, generator), cg_iterations)


def pigdm_start(model, y, op, t: int, start: str, draw, cg_iterations: int):
    """x_T for `start` ("noise" or "measurement"), drawing z with `draw`."""
    z = draw((y.shape[0], *op.input_shape), y)
    if start == "noise":
        return z
    a = alpha_bar(model, t, y)
    return a.sqrt() * pseudo_inverse(op, y, cg_iterations) + (1 - a).sqrt() * z


def pseudo_inverse(op, y, cg_iterations: int):
    """H⁺y: in closed form with an SVD, else `degradations.linalg.least_squares` (CG on the normal equations,
    consistent also for noisy Fourier samples of a real image, where H Hᵀ is singular)."""
    if has_svd(op):
        return back_projection(op, 0.0)(y, 1.0)
    return least_squares(op, y, cg_iterations)


def residual_step(residual, moved):
    """Per image (B,), min(1, ⟨r, HΔ⟩ / ‖HΔ‖²) (≥ 0; 1 where HΔ = 0): the multiple c of Δ that minimises
    ‖r − c HΔ‖, capped at the full step."""
    r, m = residual.reshape(residual.shape[0], -1), moved.reshape(moved.shape[0], -1)
    along, length = (r * m).sum(1), (m * m).sum(1)
    return torch.where(length > 0, (along / torch.where(length > 0, length, 1)).clamp(0, 1), 1).to(moved.dtype)


def back_projection(op, sigma_y: float, cg_iterations: int = 100):
    """residual, r² → Hᵀ (r² H Hᵀ + σ_y² I)⁻¹ residual (in closed form with an SVD, else by conjugate
    gradients); at σ_y = 0 and r² = 1 it is H⁺ residual."""
    if has_svd(op):
        return _svd_back_projection(op, sigma_y)
    return _cg_back_projection(op, sigma_y, cg_iterations)


def _svd_back_projection(op, sigma_y):
    """V pad(s/(r² s² + σ_y²) ⊙ Uᵀ residual), 0 on zero singular values."""
    def apply(residual, r2):
        s = op.singulars().to(residual.device, residual.dtype)
        denominator = r2 * s**2 + sigma_y**2
        gain = torch.where(denominator > 0, s / torch.where(denominator > 0, denominator, 1), 0)
        w = gain * op.Ut(residual)
        return op.V(torch.nn.functional.pad(w, (0, math.prod(op.input_shape) - s.numel())))
    return apply


def _cg_back_projection(op, sigma_y, iterations):
    """The same by conjugate gradients on (r² H Hᵀ + σ_y² I) w = residual, then Hᵀ w."""
    def apply(residual, r2):
        w = conjugate_gradient(lambda u: r2 * op.H(op.Ht(u)) + sigma_y**2 * u, residual, iterations)
        return op.Ht(w)
    return apply
