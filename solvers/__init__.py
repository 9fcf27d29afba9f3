"""Samplers for pretrained diffusion models, as plain functions over (model, timesteps[, y, operator]).

A model is anything with `alphas_cumprod` callable as model(x_t, t) → ε (model(x_t, t, cond) when a
`cond` is given); operators follow the SVD protocol of `degradations`. Every sampler takes explicit
descending timesteps, makes exactly len(timesteps) model calls, steps after the last one to ᾱ = 1 and
returns x̂₀; randomness comes from `noise(shape)` or a `generator`; callback(info) sees nfe, t, x, x0.
A state or x̂₀ that stops being finite raises SolverDiverged (one line: solver, call, t, a remedy).
Restorers: ddrm, ddnm (SVD operators; ddnm's grid may jump back up), pigdm (linear H with Ht), dps (any
differentiable forward); pigdm and dps take one backward pass through the network per call.
Estimates: K posterior draws per measurement in one batch (repeat_for_samples, split_samples,
sample_estimate, nested(samples=K)) give the posterior mean and per-pixel std (estimate, PosteriorEstimate).
"""
from .common import SolverDiverged
from .ddim import ddim
from .ddnm import ddnm, time_travel_timesteps
from .ddpm import ddpm
from .ddrm import ddrm, ddrm_init
from .dpm_solver import dpm_solver
from .dps import dps
from .estimates import PosteriorEstimate, estimate, repeat_for_samples, sample_estimate, split_samples
from .nested import NestedRun, Preview, inner_run_lengths, nested, plan
from .pigdm import STARTS as PIGDM_STARTS
from .pigdm import WEIGHTS as PIGDM_WEIGHTS
from .pigdm import pigdm, pigdm_init
from .timesteps import (cut_to_budget, ddrm_timesteps, dpm_inner_timesteps, inner_step_counts, inner_timesteps,
                        linspace_timesteps, matched_inner_timesteps, outer_timesteps, plain_ddrm_timesteps,
                        planned_inner_counts, sd_inner_timesteps, sd_outer_timesteps)

__all__ = [
    "SolverDiverged", "ddim", "ddpm", "ddrm", "ddrm_init", "ddnm", "time_travel_timesteps", "pigdm", "pigdm_init",
    "PIGDM_WEIGHTS", "PIGDM_STARTS", "dps", "dpm_solver", "nested",
    "NestedRun", "Preview", "ddrm_timesteps",
    "inner_timesteps", "dpm_inner_timesteps", "sd_inner_timesteps", "outer_timesteps", "sd_outer_timesteps",
    "inner_step_counts", "linspace_timesteps", "cut_to_budget", "plain_ddrm_timesteps", "planned_inner_counts",
    "matched_inner_timesteps", "inner_run_lengths", "plan",
    "PosteriorEstimate", "estimate", "repeat_for_samples", "split_samples", "sample_estimate",
]
