"""Noise schedules of the DDPM family, built from the ``diffusion:`` section of a DDRM-style config."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def betas_from_config(diffusion: Mapping) -> torch.Tensor:
    """β_1…β_T (float64) for ``beta_schedule`` linear or quad between ``beta_start`` and ``beta_end``."""
    kind = diffusion.get("beta_schedule", "linear")
    start, end = float(diffusion["beta_start"]), float(diffusion["beta_end"])
    steps = int(diffusion["num_diffusion_timesteps"])
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float64)
    if kind == "quad":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    raise ValueError(f"beta_schedule {kind!r} is not supported: use 'linear' or 'quad'")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s), float64 (solvers cast it to the images' dtype)."""
    return torch.cumprod(1.0 - betas.double(), dim=0)
