"""Pieces shared by the latent-diffusion adapters (Stable Diffusion, DiT): the VAE codec, the noise
schedule of a diffusers pipeline folder, and a loader that picks the adapter from the folder's layout.

diffusers and transformers are optional (`pip install 'ipsolve[diffusers]'`); they are imported only
when a latent model is built, so the rest of ipsolve never needs them. Weights are read from local
folders only (`local_files_only=True`): nothing is ever downloaded.
"""
from __future__ import annotations

import importlib
import json
import os

import torch

SD15_FOLDER = "stable-diffusion-v1-5"
DIT_FOLDER = "DiT-XL-2-256"

SD_LAYOUT = ("unet", "vae", "text_encoder", "tokenizer")
DIT_LAYOUT = ("transformer", "vae")


def import_optional(module):
    """Import diffusers or transformers, or say in one line how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"latent models need the optional packages diffusers and transformers: "
                         f"pip install 'ipsolve[diffusers]' ({module} is missing)") from None


def named_weights_folder(name):
    """The folder of a named model ('sd15' or 'dit') in the weights folder ($IPSOLVE_WEIGHTS, else
    ~/.cache/ipsolve/weights); FileNotFoundError (one line) when it is not there."""
    from ipsolve.models.loading import WEIGHTS_ENV, weights_dir

    folder = {"sd15": SD15_FOLDER, "dit": DIT_FOLDER}[name]
    path = os.path.join(weights_dir(), folder)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {name} looks for {path}: put the diffusers folder {folder}/ in "
                                f"${WEIGHTS_ENV} (or ~/.cache/ipsolve/weights), or pass the folder's path "
                                f"(see docs/generation.md)")
    return path


def missing_parts(path, layout):
    """The subfolders of `layout` that the pipeline folder `path` lacks."""
    return [part for part in layout if not os.path.isdir(os.path.join(path, part))]


def check_layout(path, layout, kind):
    """FileNotFoundError (one line) unless `path` is a diffusers folder holding every part of `layout`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder; a {kind} model is a diffusers folder with "
                                f"{', '.join(p + '/' for p in layout)} (see docs/generation.md)")
    missing = missing_parts(path, layout)
    if missing:
        raise FileNotFoundError(f"{path} is not a {kind} diffusers folder: {', '.join(m + '/' for m in missing)} "
                                f"missing (see docs/generation.md)")


def is_latent_folder(path):
    """True when `path` is a folder laid out as a Stable Diffusion or DiT pipeline."""
    return os.path.isdir(path) and (not missing_parts(path, SD_LAYOUT) or not missing_parts(path, DIT_LAYOUT))


def load_latent_model(path, device=None, dtype=None, eps_only=False):
    """Build the adapter for a local diffusers pipeline folder: Stable Diffusion (unet/ text_encoder/
    tokenizer/ vae/) or DiT (transformer/ vae/); scheduler/ is optional."""
    from ipsolve.models.dit import DiT
    from ipsolve.models.stable_diffusion import StableDiffusion

    if os.path.isdir(os.path.join(path, "transformer")):
        return DiT.from_pretrained(path, device=device, dtype=dtype, eps_only=eps_only)
    return StableDiffusion.from_pretrained(path, device=device, dtype=dtype)


def alphas_cumprod_from_folder(path, default_config):
    """ᾱ_t (float64) from the pipeline's scheduler/scheduler_config.json, or from `default_config`
    (beta_start, beta_end, beta_schedule, num_train_timesteps) when the folder has no scheduler."""
    config_path = os.path.join(path, "scheduler", "scheduler_config.json")
    config = dict(default_config)
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
    scheduler = import_optional("diffusers").DDPMScheduler.from_config(config)
    return scheduler.alphas_cumprod.to(torch.float64)


def load_part(cls, path, subfolder, device=None, dtype=None):
    """One component of a pipeline folder, local files only; networks come in eval mode, without
    gradients, on `device` and in `dtype` (None: as stored)."""
    try:
        part = cls.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{os.path.join(path, subfolder)} could not be loaded: {first_line}") from None
    if not isinstance(part, torch.nn.Module):
        return part
    if device is not None:
        part = part.to(device)
    if dtype is not None:
        part = part.to(dtype)
    return part.eval().requires_grad_(False)


def batch_of(cond, batch):
    """Broadcast a conditioning with batch size 1 to `batch`; any other size must already match."""
    if cond.shape[0] == batch:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(batch, *cond.shape[1:])
    raise ValueError(f"conditioning has batch {cond.shape[0]} but the images have batch {batch}: "
                     f"give one conditioning or one per image")


class VAECodec:
    """Images in [0, 1] ↔ latents scaled by the VAE's `scaling_factor`, as the diffusion model sees them."""

    def __init__(self, vae):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    @property
    def downscale(self):
        """Pixels per latent cell along each axis (8 for SD and DiT)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def decode(self, latents):
        """Latents (B, 4, h, w) → images (B, 3, h·f, w·f) in [0, 1], in the latents' dtype and device."""
        vae_dtype = self.vae.dtype
        images = self.vae.decode(latents.to(vae_dtype) / self.scaling_factor).sample
        return ((images + 1) / 2).clamp(0, 1).to(latents.dtype)

    @torch.no_grad()
    def encode(self, images, generator=None):
        """Images (B, 3, H, W) in [0, 1] → latents; the posterior mean, or a draw when `generator` is given."""
        posterior = self.vae.encode((2 * images - 1).to(self.vae.dtype)).latent_dist
        latents = posterior.mean if generator is None else posterior.sample(generator=generator)
        return (latents * self.scaling_factor).to(images.dtype)
