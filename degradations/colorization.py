"""Colorization: each RGB pixel is seen through one gray value, y = w · (r, g, b)."""
import torch

from .base import SVDOperator, check_image_size, orthogonal_completion

# The reference's weights (not exactly 1/3 each).
GRAY_WEIGHTS = (0.3333, 0.3334, 0.3333)


class Colorization(SVDOperator):
    """RGB (3, H, W) → gray (1, H, W) with y = Σ_c w_c x_c, w = GRAY_WEIGHTS.

    Per pixel H is the row w: one singular value ‖w‖, V is a 3×3 orthogonal matrix whose first column is
    w/‖w‖. Spectral order: the H·W coefficients along w/‖w‖ (pixel order) first, then the two null planes.
    H⁺ y = w y / ‖w‖².
    """

    def __init__(self, image_size=(256, 256), channels=3):
        if channels != 3:
            raise ValueError(f"colorization needs channels=3 (RGB images), got channels={channels!r}")
        height, width = check_image_size(image_size)
        weights = torch.tensor(GRAY_WEIGHTS, dtype=torch.float64)
        norm = torch.linalg.vector_norm(weights)
        super().__init__((3, height, width), (1, height, width),
                         torch.full((height * width,), norm.item(), dtype=torch.float64), "color")
        self._register_factor("weights", weights)
        self._register_factor("pixel_basis", orthogonal_completion(weights / norm))

    def _Vt(self, x):
        pixels = x.reshape(x.shape[0], 3, -1)
        return (self._factor("pixel_basis", x).T @ pixels).reshape(x.shape[0], -1)

    def _V(self, z):
        coefficients = z.reshape(z.shape[0], 3, -1)
        return (self._factor("pixel_basis", z) @ coefficients).reshape(z.shape[0], *self.input_shape)

    def _H(self, x):
        gray = self._factor("weights", x) @ x.reshape(x.shape[0], 3, -1)
        return gray.reshape(x.shape[0], *self.measurement_shape)

    def _Ht(self, y):
        return y * self._factor("weights", y).view(1, 3, 1, 1)

    def _H_pinv(self, y):
        weights = self._factor("weights", y)
        return y * (weights / weights.square().sum()).view(1, 3, 1, 1)

