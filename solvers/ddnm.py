"""DDNM and DDNM+ (Wang, Yu, Zhang 2023): null-space projection in the spectral space of H = U Σ Vᵀ.

With a' = √ᾱ_{t'}, σ' = √(1−ᾱ_{t'}) (VP scale), c = Vᵀx̂₀, e = Vᵀε̂, ȳ_i = (Uᵀy)_i / s_i, a step t → t' is
  x̂₀' = x̂₀ − V(λ ⊙ r),  r_i = c_i − ȳ_i on the range (i < k), 0 on the null space;
  x_{t'} = a' x̂₀' + V(d1 ⊙ z + d2 ⊙ e),  z ~ N(0, I) in spectral coordinates.
DDNM (σ_y = 0): λ ≡ 1, d1 = σ'η, d2 = σ'√(1−η²). DDNM+ (σ_y > 0), on range coordinates only: where
σ' < a'σ_y/s_i, λ_i = s_i σ'√(1−η²)/(a'σ_y), d1 = σ'η, d2 = 0; where σ' > a'σ_y/s_i, λ_i = 1,
d1 = √(σ'² − a'²σ_y²/s_i²), d2 = 0. Both factors act on spectral coordinates (the published code forgets
to rotate ε̂ and z into them for its SR and colorization operators; this module does not).
"""
from __future__ import annotations

import math

import torch

from .common import alpha_bar, denoise, divergence_checked, noise_drawer, require_svd, with_next
from .ddrm import SpectralMeasurement


@divergence_checked()
def ddnm(model, y, op, sigma_y, timesteps, eta: float = 0.85, x_T=None, noise=None, generator=None,
         callback=None, cond=None):
    """Restore x₀ from y = H x₀ + σ_y n with DDNM (σ_y = 0) or DDNM+ (σ_y > 0); return x̂₀' at t = 0.

    `timesteps` may go back up (time travel, see `time_travel_timesteps`): a step up from t to t' > t
    re-noises the last uncorrected x̂₀, x_{t'} = √ᾱ_{t'} x̂₀ + √(1−ᾱ_{t'}) z, without a model call; every
    step down makes one model call, and the step after the last timestep goes to ᾱ = 1.
    x_T is the state at timesteps[0] (None: standard normal noise, as the reference). Draws come from
    `noise(shape)` or `generator`: x_T, then one B×D draw per step. callback(info) after each model call.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    require_svd(op, "ddnm")
    steps = check_travel_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    meas = SpectralMeasurement(y, op, sigma_y)
    x = draw(meas.image_shape, y) if x_T is None else x_T
    x0, nfe = None, 0
    for t, t_next in with_next(steps):
        a_next = alpha_bar(model, t_next, x)
        z = draw((x.shape[0], meas.dim), x)
        if t_next > t:  # time travel: back up the chain from the last uncorrected x̂₀
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * op.V(z)
            continue
        nfe += 1
        eps, _, _, x0 = denoise(model, x, t, cond, nfe, callback)
        x = op.V(_step(meas, op.Vt(x0), op.Vt(eps), z, a_next, eta))
    return x


def _step(meas, c, e, z, a_next, eta):
    """Vᵀx_{t'} from c = Vᵀx̂₀, e = Vᵀε̂ and z (module docstring)."""
    k, s, sigma_y = meas.k, meas.s, meas.sigma_y
    a, sigma = a_next.sqrt(), (1 - a_next).sqrt()
    lam = torch.ones_like(s)
    d1 = torch.full_like(c, 1) * sigma * eta
    d2 = torch.full_like(c, 1) * sigma * math.sqrt(1 - eta**2)
    if sigma_y > 0:
        limit = a * sigma_y / s  # σ' at which coordinate i is as noisy as y_i / s_i
        below, above = sigma < limit, sigma > limit
        lam = torch.where(below, s * sigma * math.sqrt(1 - eta**2) / (a * sigma_y), lam)
        d1[:, :k] = torch.where(above, (sigma**2 - limit**2).clamp_min(0).sqrt(), d1[:, :k])
        d2[:, :k] = torch.where(below | above, 0, d2[:, :k])
    corrected = c.clone()
    corrected[:, :k] = c[:, :k] - lam * (c[:, :k] - meas.y_bar)
    return a * corrected + d1 * z + d2 * e


def check_travel_timesteps(timesteps, model) -> list[int]:
    """`timesteps` as ints in the training range, no two neighbours equal, the first step going down."""
    steps = [int(t) for t in (timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)]
    num_train = len(model.alphas_cumprod)
    if not steps:
        raise ValueError("timesteps is empty: give at least one timestep, e.g. solvers.ddrm_timesteps(20)")
    if min(steps) < 0 or max(steps) >= num_train:
        raise ValueError(f"timesteps must lie in 0…{num_train - 1} (the model's training range), got {steps}")
    if any(a == b for a, b in zip(steps, steps[1:])) or (len(steps) > 1 and steps[1] > steps[0]):
        raise ValueError(f"timesteps must change at every step and start by going down, got {steps}")
    return steps


def time_travel_timesteps(steps: int, travel_length: int, travel_repeat: int, num_train_steps: int = 1000):
    """DDNM's jump schedule in timesteps (the reference `get_schedule_jump` × skip, skip = T // steps).

    Counting down from steps − 1 to 0 in units of skip, after reaching each j < steps − travel_length with
    j divisible by travel_length it jumps back up travel_length units, travel_repeat − 1 times per j.
    (10, 3, 2) → 900, 800, 700, 600, 700, 800, 900, 800, …; travel_repeat = 1 is the plain grid.
    The final step to ᾱ = 1 is implied, as for every sampler here.
    """
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must lie in 1…{num_train_steps}, got {steps}")
    if travel_length < 1 or travel_repeat < 1:
        raise ValueError(f"travel_length and travel_repeat must be ≥ 1, got {travel_length}, {travel_repeat}")
    jumps = {j: travel_repeat - 1 for j in range(0, steps - travel_length, travel_length)}
    units, t = [], steps
    while t >= 1:
        t -= 1
        units.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(travel_length):
                t += 1
                units.append(t)
    skip = num_train_steps // steps
    return [u * skip for u in units]
