"""A nonlinear forward model: a saturating sensor, y = tanh(g·x) / tanh(g) per pixel (model space).

It maps [−1, 1] onto itself, is nearly linear for small gains g and clips highlights and shadows for large
ones. Being nonlinear it has no adjoint, pseudo-inverse or SVD: only DPS-style solvers, which need just a
differentiable forward, take it.
"""
import math

import torch

from .base import check_channels, check_image_size


class Saturation:
    """(C, H, W) → (C, H, W), y = tanh(g x) / tanh(g); `forward(x)` and `H(x)` are the same map."""

    has_svd = False

    def __init__(self, gain=2.0, channels=3, image_size=(256, 256)):
        if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not 0 < gain < 50:
            raise ValueError(f"the saturation gain must be a number in (0, 50), got {gain!r}")
        height, width = check_image_size(image_size)
        self.gain = float(gain)
        self.input_shape = self.measurement_shape = (check_channels(channels), height, width)
        self.name = "saturate"

    def H(self, x):
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"saturate expects images of shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got {shape}")
        return torch.tanh(self.gain * x) / math.tanh(self.gain)

    forward = __call__ = H

    def spec(self):
        channels, height, width = self.input_shape
        return {"name": self.name, "channels": channels, "image_size": [height, width], "gain": self.gain}

    def __repr__(self):
        return f"Saturation({self.spec()})"
