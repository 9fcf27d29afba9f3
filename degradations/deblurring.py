"""Separable deblurring: H x = conv2d(pad(x), k_h ⊗ k_w), image size preserved, per channel.

The boundary rule is a torch padding mode applied before the convolution: "reflect" (default; mirror
without repeating the edge pixel, d c b | a b c d | c b a), "replicate", "circular" or "zero". A kernel
of length L is padded (L−1)//2 before and L//2 after, so H equals
``F.conv2d(F.pad(x, (lw, rw, lh, rh), mode), outer(k_h, k_w))`` (cross-correlation, as torch) exactly.
Unlike the reference's Deblurring classes, this operator is the blur it names (every channel, every tap).
"""
import math

import torch
import torch.nn.functional as F

from .base import check_image_size
from .separable import SeparableOperator

BOUNDARIES = {"reflect": "reflect", "replicate": "replicate", "circular": "circular", "zero": "constant"}


class Deblurring(SeparableOperator):
    """Blur by the separable kernel outer(kernel_h, kernel_w) (kernel_w defaults to kernel_h).

    threshold: 1-D singular values at or below it are dropped (the blur is then replaced by its truncated
    SVD and H⁺ is the truncated pseudo-inverse); the default 0 drops only numerically zero ones, so H is
    exactly the blur.
    """

    def __init__(self, kernel_h, kernel_w=None, channels=3, image_size=(256, 256), boundary="reflect",
                 threshold=0.0):
        height, width = check_image_size(image_size)
        kernel_h = _check_kernel(kernel_h)
        kernel_w = kernel_h if kernel_w is None else _check_kernel(kernel_w)
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}; use one of {', '.join(BOUNDARIES)}")
        self.kernel_h, self.kernel_w, self.boundary = kernel_h, kernel_w, boundary
        super().__init__(blur_matrix(kernel_h, height, boundary), blur_matrix(kernel_w, width, boundary),
                         channels, threshold, "deblur",
                         {"kernel_h": kernel_h.tolist(), "kernel_w": kernel_w.tolist(), "boundary": boundary,
                          "threshold": threshold})


def blur_matrix(kernel, size, boundary):
    """The (size, size) matrix of a 1-D 'same' correlation with `kernel` under the boundary rule."""
    length = kernel.numel()
    before, after = (length - 1) // 2, length // 2
    if boundary == "reflect" and max(before, after) >= size:
        raise ValueError(f"a {length}-tap kernel cannot be reflected on a side of {size} pixels; "
                         f"use a larger image or boundary='zero'")
    identity = torch.eye(size, dtype=torch.float64).unsqueeze(1)
    padded = F.pad(identity, (before, after), mode=BOUNDARIES[boundary])
    columns = F.conv1d(padded, kernel.to(torch.float64).view(1, 1, -1)).squeeze(1)
    return columns.T


def uniform_kernel(width=9):
    """`width` equal taps summing to 1 (the reference's deblur_uni: 9 taps)."""
    return torch.full((_check_width(width),), 1.0 / width, dtype=torch.float64)


def gaussian_kernel(sigma, width):
    """`width` taps exp(−t²/(2σ²)) at integer offsets t centred on the kernel, normalised to sum 1."""
    if not sigma > 0:
        raise ValueError(f"the Gaussian blur sigma must be positive, got {sigma!r}")
    offsets = torch.arange(_check_width(width), dtype=torch.float64) - (width - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _check_width(width):
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"the kernel width must be a positive integer, got {width!r}")
    return width


def _check_kernel(kernel):
    kernel = torch.as_tensor(kernel, dtype=torch.float64).detach().cpu()
    if kernel.ndim != 1 or kernel.numel() == 0 or not torch.isfinite(kernel).all():
        raise ValueError("a blur kernel must be a non-empty 1-D list of finite numbers")
    if math.isclose(kernel.abs().sum().item(), 0.0):
        raise ValueError("a blur kernel must have a nonzero tap")
    return kernel
