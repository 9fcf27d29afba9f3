"""DDIM (Song et al. 2021): deterministic for η = 0, DDPM-like for η = 1."""
from __future__ import annotations

from .common import alpha_bar, check_timesteps, ddim_step, denoise, divergence_checked, noise_drawer, with_next


@divergence_checked()
def ddim(model, x_T, timesteps, eta: float = 0.0, noise=None, generator=None, callback=None, cond=None):
    """Run DDIM from x_T (the state at timesteps[0]) down the descending `timesteps`; return x̂₀ (t' = −1).

    Makes exactly len(timesteps) model calls; callback(info) after each (info: nfe, t, x, x0).
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    steps = check_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    x = x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        eps, _, a, x0 = denoise(model, x, t, cond, nfe, callback)
        x = ddim_step(x0, eps, a, alpha_bar(model, t_next, x), eta, draw)
    return x
