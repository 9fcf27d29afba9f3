"""Bicubic super-resolution: per axis, a strided bicubic filter (a = −0.5) with symmetric borders.

Output sample i of an axis of length n is Σ_j k((j − c_i)/r) x_j / Σ_j k((j − c_i)/r), c_i = i·r + (r−1)/2
the centre of block i, over the 4r taps with |j − c_i| < 2r; pixels outside the image are mirrored with
the edge repeated (x_{−1} = x_0, half-sample symmetric). For even r this is the reference's SRConv
filter exactly; it is also the interior of the antialiased bicubic downscaling of PIL and
``F.interpolate(..., mode="bicubic", antialias=True)``. The two 1-D matrices are (H/r, H) and (W/r, W);
1-D singular values below `threshold` (3e-2, as the reference) would be dropped, but at r = 2 … 16 none
is (the smallest is about 0.17), so by default H is exactly this filter.
"""
import torch

from .base import check_channels, check_factor, check_image_size
from .separable import SeparableOperator


class BicubicSR(SeparableOperator):
    """(C, H, W) → (C, H/r, W/r) by separable bicubic filtering with stride r; r must divide H and W."""

    def __init__(self, factor, channels=3, image_size=(256, 256), threshold=3e-2):
        height, width = check_image_size(image_size)
        check_channels(channels)
        self.factor = check_factor(factor, height, width)
        super().__init__(bicubic_matrix(factor, height), bicubic_matrix(factor, width), channels,
                         threshold, f"sr_bicubic{factor}", {"threshold": threshold})


def bicubic_weight(t, a=-0.5):
    """Keys' cubic convolution kernel."""
    t = t.abs()
    near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_matrix(factor, size):
    """The (size/factor, size) matrix of the strided bicubic filter with half-sample symmetric borders."""
    # offsets j − c of the 4r taps around a block centre c (half-integers when r is even)
    offsets = torch.arange(4 * factor, dtype=torch.float64) - 2 * factor + (0.5 if factor % 2 == 0 else 0.0)
    weights = bicubic_weight(offsets / factor)
    weights = weights / weights.sum()
    centres = torch.arange(size // factor, dtype=torch.float64) * factor + (factor - 1) / 2
    positions = (centres.view(-1, 1) + offsets.view(1, -1)).round().long()
    period = positions.remainder(2 * size)
    mirrored = torch.where(period < size, period, 2 * size - 1 - period)
    matrix = torch.zeros(size // factor, size, dtype=torch.float64)
    matrix.scatter_add_(1, mirrored, weights.expand_as(mirrored).contiguous())
    return matrix
