"""Estimates made before large work: is there enough memory, and are the steps possible at all?

The memory estimate of one network call is analytic for the DDPM UNet (every feature map the down path
keeps for the up path, the working maps of the largest block, and the (HW)² attention matrices, which grow
with the square of the image size); any model also holds the solver's image-sized state. Work that
cannot fit is refused with one line giving the estimate and the limit; `force` skips the memory check.
"""
from __future__ import annotations

import math
import os

import torch

from ipsolve.models.unet import DDPMUNet

SOLVER_IMAGES = 16    # image-sized tensors a solver keeps per sample (x, x̂₀, ε̂, spectral copies, noise)
WORKING_MAPS = 6      # feature maps alive inside one ResnetBlock / AttnBlock besides the kept ones
USABLE_FRACTION = 0.8  # of the memory available now


def check_steps(model, outer: int, inner: int) -> None:
    """ValueError unless both step counts fit in the model's training timesteps."""
    steps = len(model.alphas_cumprod)
    for flag, count in (("--outer", outer), ("--inner", inner)):
        if count > steps:
            raise ValueError(f"{flag} {count} is more than the model's {steps} training timesteps: "
                             f"use at most {steps}")


def check_fits(model, image_shape: tuple, batch: int, device, force: bool = False) -> int:
    """The estimated peak bytes of solving a batch of `image_shape` images (every row: `ipsolve restore`
    --batch N --samples K passes N·K); ValueError when it exceeds
    the memory available on `device` (unless `force`)."""
    needed = estimate_bytes(model, image_shape, batch)
    limit = int(USABLE_FRACTION * available_bytes(torch.device(device)))
    if needed > limit and not force:
        channels, height, width = image_shape
        raise ValueError(f"a batch of {batch} {channels}x{height}x{width} images needs about {_gb(needed)} of "
                         f"memory, {_gb(limit)} is usable here: use smaller images or a smaller batch "
                         f"(--force runs it anyway)")
    return needed


def estimate_bytes(model, image_shape: tuple, batch: int) -> int:
    """Peak bytes of one network call plus the solver's state, for a batch of `image_shape` images."""
    channels, height, width = image_shape
    solver = SOLVER_IMAGES * batch * channels * height * width * 8  # float64 spectral work included
    unet = next((m for m in model.modules() if isinstance(m, DDPMUNet)), None) \
        if isinstance(model, torch.nn.Module) else None
    return solver + (0 if unet is None else unet_forward_bytes(unet, height, width, batch))


def unet_forward_bytes(unet: DDPMUNet, height: int, width: int, batch: int, bytes_per_value: int = 4) -> int:
    """Kept skips + working maps + attention matrices of one DDPMUNet forward, in bytes."""
    def pixels(level):
        return math.ceil(height / 2**level) * math.ceil(width / 2**level)

    kept, largest, attention = unet.ch * pixels(0), 0, 0  # conv_in's map is the first skip
    levels = len(unet.down)
    for level, stage in enumerate(unet.down):
        channels = max(block.conv2.out_channels for block in stage.block) if len(stage.block) else unet.ch
        downsampled = pixels(level + 1) if level != levels - 1 else 0  # at the next level's size
        kept += channels * (len(stage.block) * pixels(level) + downsampled)
        widest = max(block.norm1.num_channels for block in unet.up[level].block)  # its input and a skip
        largest = max(largest, widest * pixels(level))
        if len(stage.attn) or level == levels - 1:     # the middle attention runs at the lowest level
            attention = max(attention, 2 * pixels(level) ** 2)  # scores and their softmax
    values = kept + WORKING_MAPS * largest + attention
    return batch * values * bytes_per_value


def available_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device, or the memory the system has available for a new allocation."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gb(count: int) -> str:
    return f"{count / 1e9:.1f} GB"
