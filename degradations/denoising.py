"""Denoising: H = I (the noise is added by whoever simulates the measurement)."""
import torch

from .base import SVDOperator, check_channels, check_image_size


class Denoising(SVDOperator):
    """Identity operator on (C, H, W) images: U = V = I, s ≡ 1, measurement shape (C, H, W)."""

    def __init__(self, channels=3, image_size=(256, 256)):
        shape = (check_channels(channels), *check_image_size(image_size))
        dim = shape[0] * shape[1] * shape[2]
        super().__init__(shape, shape, torch.ones(dim, dtype=torch.float64), "deno")

    def _Vt(self, x):
        return x.reshape(x.shape[0], -1)

    def _V(self, z):
        return z.reshape(z.shape[0], *self.input_shape)

    _Ut = _Vt
    _U = _V

    def _H(self, x):
        return x.clone()

    _Ht = _H
    _H_pinv = _H
