"""Pixel-space diffusers ``UNet2DModel`` folders (e.g. google/ddpm-celebahq-256) as ε-models.

A folder holds config.json + diffusion_pytorch_model.{safetensors,bin} + scheduler_config.json (the
google/ddpm-* layout), or the pipeline layout unet/ + scheduler/. Needs the optional extra
``pip install 'ipsolve[diffusers]'``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ipsolve.models.diffusion import DiffusionModel
from ipsolve.models.latent import import_optional


class DiffusersUNet(nn.Module):
    """``net(x, t) → ε`` around a ``UNet2DModel`` (whose forward returns an output object)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.in_channels, self.out_channels = unet.config.in_channels, unet.config.out_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def is_unet_folder(path: Path) -> bool:
    """True when ``path`` is a diffusers folder of a ``UNet2DModel`` (flat or pipeline layout)."""
    return _unet_config(path) is not None


def _unet_config(path: Path) -> Path | None:
    for candidate in (path / "config.json", path / "unet" / "config.json"):
        if candidate.is_file() and json.loads(candidate.read_text()).get("_class_name") == "UNet2DModel":
            return candidate
    return None


def load_diffusers_unet(path: Path, device="cpu", dtype=None, **options) -> DiffusionModel:
    """The ``UNet2DModel`` in ``path`` with ᾱ from its DDPM scheduler config (local files only)."""
    diffusers = import_optional("diffusers")
    config_file = _unet_config(path)
    if config_file is None:
        raise FileNotFoundError(f"{path} is not a diffusers UNet2DModel folder (config.json with "
                                f"_class_name UNet2DModel, weights, scheduler_config.json)")
    unet_dir = config_file.parent
    scheduler_file = next((f for f in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json")
                           if f.is_file()), None)
    if scheduler_file is None:
        raise FileNotFoundError(f"{path} has no scheduler_config.json: the noise schedule (betas) comes from it")
    scheduler_config = json.loads(scheduler_file.read_text())
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"{path} predicts {prediction!r}; only epsilon-prediction UNet2DModel folders are supported")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{unet_dir} could not be loaded as a UNet2DModel: {first_line}") from None
    alphas_cumprod = diffusers.DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float64)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    unet.to(device=device, dtype=dtype)
    return DiffusionModel(DiffusersUNet(unet), alphas_cumprod, (unet.config.in_channels, *size), **options)
