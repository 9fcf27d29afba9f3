"""Block super-resolution: H averages every r×r block (avg_pool2d with kernel and stride r)."""
import torch
import torch.nn.functional as F

from .base import SVDOperator, check_channels, check_factor, check_image_size, orthogonal_completion


class SuperResolution(SVDOperator):
    """(C, H, W) → (C, H/r, W/r) by r×r block averaging; r must divide H and W.

    Per channel and block, H is the row (1/r²)·1 of length r²: one singular value 1/r, and V acts on the
    block with an r²×r² orthogonal matrix P whose first column is (1/r)·1. Spectral order: coefficient j of
    every block (blocks in measurement order), for j = 0 (the block means, paired with s) then j = 1 … r²−1.
    H⁺ is nearest-neighbour upsampling by r.
    """

    def __init__(self, factor, channels=3, image_size=(256, 256)):
        channels = check_channels(channels)
        height, width = check_image_size(image_size)
        self.factor = check_factor(factor, height, width)
        small = (channels, height // factor, width // factor)
        rank = small[0] * small[1] * small[2]
        super().__init__((channels, height, width), small,
                         torch.full((rank,), 1.0 / factor, dtype=torch.float64), f"sr{factor}")
        block = factor * factor
        block_mean_direction = torch.full((block,), 1.0 / factor, dtype=torch.float64)
        self._register_factor("block_basis", orthogonal_completion(block_mean_direction))

    def _Vt(self, x):
        # (B, C, H, W) → (B, r², C·h·w): pixel j of every block, blocks in measurement order
        r, (channels, rows, cols) = self.factor, self.measurement_shape
        blocks = x.reshape(x.shape[0], channels, rows, r, cols, r).permute(0, 3, 5, 1, 2, 4)
        blocks = blocks.reshape(x.shape[0], r * r, -1)
        return (self._factor("block_basis", x).T @ blocks).reshape(x.shape[0], -1)

    def _V(self, z):
        r, (channels, rows, cols) = self.factor, self.measurement_shape
        blocks = self._factor("block_basis", z) @ z.reshape(z.shape[0], r * r, -1)
        image = blocks.reshape(z.shape[0], r, r, channels, rows, cols).permute(0, 3, 4, 1, 5, 2)
        return image.reshape(z.shape[0], *self.input_shape)

    def _H(self, x):
        return F.avg_pool2d(x, self.factor)

    def _H_pinv(self, y):
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def _Ht(self, y):
        return self._H_pinv(y) / self.factor ** 2
