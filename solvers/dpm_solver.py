"""DPM-Solver++ (Lu et al. 2022) in its data-prediction form: second order, singlestep (2S) or multistep (2M).

With λ = log(√ᾱ/√(1−ᾱ)) and h = λ_t − λ_s, the first-order update from s to t is
x_t = (σ_t/σ_s) x_s + α_t (1 − e^{−h}) D, D = x̂₀ (DDIM with η = 0); second order replaces D by a
combination of two x̂₀ predictions. The solver is deterministic.
"""
from __future__ import annotations

from .common import alpha_bar, check_timesteps, denoise, divergence_checked

VARIANTS = ("2M", "2S")


@divergence_checked()
def dpm_solver(model, x_T, timesteps, order: int = 2, variant: str = "2M", noise=None, generator=None,
               callback=None, cond=None):
    """Solve the probability-flow ODE from x_T (the state at timesteps[0]); return x̂₀ (t' = −1).

    order 1 is DDIM (η = 0). "2M" corrects each step with the previous step's x̂₀; "2S" takes the
    timesteps in pairs: the second of a pair is the intermediate point of one singlestep update to the
    next pair. The last step into t' = −1 (σ = 0) is first order: the result is the last x̂₀. Exactly
    len(timesteps) model calls. `noise` and `generator` are accepted for the common signature and unused.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    steps = check_timesteps(timesteps, model)
    solve = _singlestep if order == 2 and variant == "2S" else _multistep
    return solve(model, x_T, steps, order, callback, cond)


def _multistep(model, x, steps, order, callback, cond):
    previous = None  # (λ, x̂₀) of the previous model call
    for nfe, t in enumerate(steps, start=1):
        _, _, a, x0 = denoise(model, x, t, cond, nfe, callback)
        if nfe == len(steps):
            return x0
        a_next = alpha_bar(model, steps[nfe], x)
        data = x0
        if order == 2 and previous is not None:
            r = (_lam(a) - previous[0]) / (_lam(a_next) - _lam(a))
            data = x0 + (x0 - previous[1]) / (2 * r)
        x = _first_order(x, a, a_next, data)
        previous = (_lam(a), x0)


def _singlestep(model, x, steps, order, callback, cond):
    for start in range(0, len(steps), 2):
        _, _, a, x0_start = denoise(model, x, steps[start], cond, start + 1, callback)
        if start + 1 == len(steps):
            return x0_start
        a_mid = alpha_bar(model, steps[start + 1], x)
        *_, x0_mid = denoise(model, _first_order(x, a, a_mid, x0_start), steps[start + 1], cond, start + 2,
                             callback)
        if start + 2 == len(steps):
            return x0_mid
        a_next = alpha_bar(model, steps[start + 2], x)
        r = (_lam(a_mid) - _lam(a)) / (_lam(a_next) - _lam(a))
        x = _first_order(x, a, a_next, (1 - 1 / (2 * r)) * x0_start + x0_mid / (2 * r))


def _lam(a):
    return 0.5 * (a.log() - (1 - a).log())


def _first_order(x, a, a_next, data):
    """x_t = (σ_t/σ_s) x_s + α_t (1 − e^{−h}) D."""
    h = _lam(a_next) - _lam(a)
    return ((1 - a_next) / (1 - a)).sqrt() * x - a_next.sqrt() * (-h).expm1() * data
