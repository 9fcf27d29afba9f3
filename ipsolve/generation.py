"""Sampling images with Nested Diffusion (Algorithm 2 of the paper).

`generate(model, outer_steps, inner_steps, n, cond=…)` picks the paper's defaults for the model's family
(`PRESETS`), wraps the model in classifier-free guidance for the inner runs, and returns the
`solvers.NestedRun` to iterate; `to_images` turns its previews into images. The `ipsolve generate`
command (`ipsolve.services.generate_run`) adds model loading, conditioning from --prompt / --class, human
feedback (`ipsolve.feedback`) and the output folder.

NFE convention: one network function evaluation per guided evaluation (ε_c and ε_u come from one batched
call of 2n images and count once), as in the paper.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import solvers
from ipsolve.guidance import guided

INNER_SAMPLERS = ("ddim", "ddpm", "dpm_solver")


@dataclass(frozen=True)
class Preset:
    """Defaults of one model family: the inner sampler and its options, guidance scale, outer η and the
    timestep grids. outer_grid(S, T) → S descending outer times; inner_grids[sampler](t, I) → I inner times."""

    inner: str
    guidance: float | None
    outer_grid: Callable[[int, int], list[int]]
    inner_grids: dict[str, Callable[[int, int], list[int]]]
    inner_options: dict = field(default_factory=lambda: {"ddim": {"eta": 0.85}, "ddpm": {},
                                                         "dpm_solver": {"order": 2, "variant": "2S"}})
    eta_outer: float = 0.0


def _released_dit_outer(steps, num_train):
    """1000 respaced into S+1 evenly spaced points, minus 0 (5 → 999, 799, 599, 400, 200)."""
    return solvers.outer_timesteps(steps, num_train - 1)


# The released code's grids: Stable Diffusion runs DDIM η = 0.85 inside on round(linspace(1, t, I)) (then to
# the clean image) under an outer DDIM η = 0 on round(linspace(1, 999, S+1)); DPM-Solver++(2S) inside on
# round(linspace(0, t, I+1)) minus 0. DiT runs DDPM with learned variance inside, I points on [0, t].
PRESETS = {
    "sd": Preset(inner="ddim", guidance=7.5, outer_grid=solvers.sd_outer_timesteps,
                 inner_grids={"ddim": solvers.sd_inner_timesteps, "ddpm": solvers.sd_inner_timesteps,
                              "dpm_solver": solvers.dpm_inner_timesteps}),
    "dit": Preset(inner="ddpm", guidance=1.5, outer_grid=_released_dit_outer,
                  inner_grids={"ddim": solvers.inner_timesteps, "ddpm": solvers.inner_timesteps,
                               "dpm_solver": solvers.dpm_inner_timesteps}),
    "pixel": Preset(inner="ddim", guidance=None, outer_grid=_released_dit_outer,
                    inner_grids={"ddim": solvers.inner_timesteps, "ddpm": solvers.inner_timesteps,
                                 "dpm_solver": solvers.dpm_inner_timesteps}),
}


def model_family(model):
    """'sd' (text-conditioned latent model), 'dit' (class-conditioned latent model) or 'pixel'."""
    if hasattr(model, "encode_prompt"):
        return "sd"
    if hasattr(model, "class_labels"):
        return "dit"
    return "pixel"


def generate(model, outer_steps, inner_steps, n=1, *, cond=None, guidance=None, inner=None, budget=None,
             generator=None, x_T=None, hook=None, callback=None, preset=None):
    """Nested Diffusion sampling of `n` candidates; returns the `solvers.NestedRun` (iterate for previews).

    cond: the model's conditioning (`model.encode_prompt(text)`, `model.class_labels(k)`), None for
    unconditional sampling. guidance: the CFG scale w (default: the preset's; ignored without cond).
    inner: "ddim", "ddpm" or "dpm_solver" (default: the preset's). Previews of latent models are latents:
    `model.decode(preview.x0)` gives images in [0, 1]. hook(preview, run) may call run.keep / run.set_cond
    (see `ipsolve.feedback.Feedback`).
    """
    preset = preset or PRESETS[model_family(model)]
    inner = inner or preset.inner
    if inner not in INNER_SAMPLERS:
        raise ValueError(f"inner sampler {inner!r} is not one of {', '.join(INNER_SAMPLERS)}")
    if guidance is not None and not hasattr(model, "null_cond"):
        raise ValueError("guidance needs a conditional model (Stable Diffusion or DiT)")
    scale = preset.guidance if guidance is None else guidance
    network = model if cond is None or scale is None else guided(model, scale, model.null_cond())
    device = next((p.device for p in model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return solvers.nested(network, inner=inner, inner_steps=inner_steps,
                          outer_timesteps=preset.outer_grid(outer_steps, len(model.alphas_cumprod)),
                          inner_grid=preset.inner_grids[inner], shape=(n, *model.image_shape), x_T=x_T,
                          dtype=torch.float32, device=device, budget=budget, eta_outer=preset.eta_outer,
                          generator=generator, cond=cond, hook=hook, callback=callback,
                          **preset.inner_options[inner])


def to_images(model, x0):
    """Anytime images in [0, 1] on the CPU: decoded latents, or pixel model space mapped to [0, 1]."""
    images = model.decode(x0) if hasattr(model, "decode") else (x0 + 1) / 2
    return images.detach().to("cpu", torch.float32).clamp(0, 1)
