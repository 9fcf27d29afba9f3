"""Ancestral DDPM sampling (Ho et al. 2020) on any descending grid, with fixed or learned variance."""
from __future__ import annotations

from .common import alpha_bar, check_timesteps, denoise, divergence_checked, noise_drawer, with_next

VARIANCES = ("fixedsmall", "fixedlarge", "learned")


@divergence_checked()
def ddpm(model, x_T, timesteps, variance: str | None = None, noise=None, generator=None, callback=None,
         cond=None):
    """Sample p(x_{t'} | x_t) = N(posterior mean from (x_t, x̂₀), σ²) down `timesteps`; return x̂₀ (t' = −1).

    With β = 1 − ᾱ_t/ᾱ_{t'} (the step's β on a respaced grid) and β̃ = β (1−ᾱ_{t'})/(1−ᾱ_t):
    variance "fixedsmall" uses σ² = β̃, "fixedlarge" σ² = β, "learned" the model's interpolation
    log σ² = f log β + (1−f) log β̃ with f = (v+1)/2 (improved DDPM / DiT). None picks "learned" for a
    model with `learned_sigma`, else "fixedsmall". The last step adds no noise. len(timesteps) calls.
    """
    learned = getattr(model, "learned_sigma", False)
    variance = variance or ("learned" if learned else "fixedsmall")
    if variance not in VARIANCES:
        raise ValueError(f"variance {variance!r} is not one of {', '.join(VARIANCES)}")
    if variance == "learned" and not learned:
        raise ValueError("variance 'learned' needs a model with learned_sigma = True (it returns 2C channels)")
    steps = check_timesteps(timesteps, model)
    draw = noise_drawer(noise, generator)
    x = x_T
    for nfe, (t, t_next) in enumerate(with_next(steps), start=1):
        _, v, a, x0 = denoise(model, x, t, cond, nfe, callback)
        x = ancestral_step(x, x0, a, alpha_bar(model, t_next, x), variance, v, draw)
    return x


def ancestral_step(x, x0, a, a_next, variance: str, v, draw):
    """One draw from N(posterior mean of x_{t'} given (x_t, x̂₀), σ²), σ² per `variance` (see `ddpm`);
    the step to ᾱ' = 1 returns x̂₀ and draws nothing."""
    if a_next >= 1:
        return x0
    beta = 1 - a / a_next
    mean = (a_next.sqrt() * beta * x0 + (a / a_next).sqrt() * (1 - a_next) * x) / (1 - a)
    log_var = _log_variance(variance, beta, beta * (1 - a_next) / (1 - a), v)
    return mean + (0.5 * log_var).exp() * draw(x.shape, x)


def _log_variance(variance, beta, beta_tilde, v):
    if variance == "fixedsmall":
        return beta_tilde.log()
    if variance == "fixedlarge":
        return beta.log()
    frac = (v + 1) / 2
    return frac * beta.log() + (1 - frac) * beta_tilde.log()
