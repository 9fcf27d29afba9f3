"""Making a measurement from a clean image: y = H x + σ_y n, the library form of `ipsolve degrade`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import degradations
from ipsolve.imageio import to_model


def degrade(image: torch.Tensor, task: str, sigma_y: float, seed: int = 0, mask: torch.Tensor | None = None):
    """Degrade `image` (C, H, W) in [0, 1] with the operator named `task`; return (y, op).

    y (1, *op.measurement_shape) is in model space and σ_y in model units. `seed` draws the noise (and
    the random mask of "inp" when no `mask`, bool (H, W) with True = observed, is given).
    """
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
    channels, height, width = image.shape
    op = _operator(task, channels, (height, width), seed, mask)
    clean = to_model(image)[None]
    generator = torch.Generator(clean.device).manual_seed(seed)
    y = op.H(clean)
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return y + sigma_y * noise, op


def _operator(task: str, channels: int, size: tuple, seed: int, mask):
    """The operator named `task`; `mask` replaces the random mask of its inpainting (last) part."""
    if mask is None:
        return degradations.make(task, channels=channels, image_size=size, seed=seed)
    *front, last = task.split("+")
    parts = [degradations.make(name, channels=channels, image_size=size, seed=seed) for name in front]
    measured = degradations.make(last, channels=channels, image_size=size, seed=seed, mask=mask)
    return degradations.compose(*parts, measured) if parts else measured


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (C, H, W) in [0, 1] to `size` (H, W) with antialiased bicubic interpolation."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    resized = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1)
