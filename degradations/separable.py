"""Separable operators: every channel X (H, W) ↦ A_h X A_wᵀ for two 1-D matrices A_h (h, H), A_w (w, W).

H = A_h ⊗ A_w per channel, so its SVD comes from the SVDs of the two 1-D matrices: with
A = U_a diag(s_a) V_aᵀ, the singular vectors are Kronecker products and the singular values the
products s_h[i]·s_w[j]. A 1-D singular value at or below `threshold` (or numerically zero) is dropped,
so the kept coefficients of a channel are the block i < r_h, j < r_w of V_hᵀ X V_w.

Spectral order (D = C·H·W): the kept block of every channel ((C, r_h, r_w), row-major) first, then the
null coefficients: the block i < r_h, j ≥ r_w of every channel, then the rows i ≥ r_h. The singular
values follow the same (C, r_h, r_w) order; they are not sorted. k = C·r_h·r_w can be smaller than the
measurement size m = C·h·w; then Ut returns the k coefficients along the kept left singular vectors
and H⁺ is the truncated pseudo-inverse. H, Hᵀ and H⁺ are applied as two small matrix products.
"""
import torch

from .base import SVDOperator, check_channels, inverse_permutation


class SeparableOperator(SVDOperator):
    """Base of Deblurring and BicubicSR: per channel X ↦ A_h X A_wᵀ, from the two 1-D matrices."""

    def __init__(self, matrix_h, matrix_w, channels, threshold, name, spec_params):
        channels = check_channels(channels)
        if not threshold >= 0:
            raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
        factors_h, values_h = _truncated_factors(matrix_h, threshold, "vertical")
        if torch.equal(matrix_h, matrix_w):  # square image, same kernel: one SVD serves both axes
            factors_w, values_w = factors_h, values_h
        else:
            factors_w, values_w = _truncated_factors(matrix_w, threshold, "horizontal")
        singulars = torch.outer(values_h, values_w).reshape(-1).repeat(channels)
        super().__init__((channels, matrix_h.shape[1], matrix_w.shape[1]),
                         (channels, matrix_h.shape[0], matrix_w.shape[0]), singulars, name, spec_params)
        self._kept = (values_h.numel(), values_w.numel())
        order = _spectral_order(self.input_shape, self._kept)
        self._register_index("order", order)
        self._register_index("inverse_order", inverse_permutation(order))
        for axis, factors in (("h", factors_h), ("w", factors_w)):
            for factor_name, factor in factors.items():
                self._register_factor(f"{factor_name}_{axis}", factor)

    def _both_sides(self, left, x, right):
        """left @ X @ rightᵀ for every channel of every image."""
        return self._factor(left, x) @ x @ self._factor(right, x).T

    def _Vt(self, x):
        coefficients = self._factor("V_h", x).T @ x @ self._factor("V_w", x)
        return coefficients.reshape(x.shape[0], -1).index_select(1, self._index("order", x))

    def _V(self, z):
        coefficients = z.index_select(1, self._index("inverse_order", z))
        return self._both_sides("V_h", coefficients.reshape(z.shape[0], *self.input_shape), "V_w")

    def _Ut(self, y):
        return (self._factor("U_h", y).T @ y @ self._factor("U_w", y)).reshape(y.shape[0], -1)

    def _U(self, w):
        kept_h, kept_w = self._kept
        coefficients = w.reshape(w.shape[0], self.input_shape[0], kept_h, kept_w)
        return self._both_sides("U_h", coefficients, "U_w")

    def _H(self, x):
        return self._both_sides("A_h", x, "A_w")

    def _Ht(self, y):
        return self._factor("A_h", y).T @ y @ self._factor("A_w", y)

    def _H_pinv(self, y):
        return self._both_sides("pinv_h", y, "pinv_w")


def _truncated_factors(matrix, threshold, axis):
    """SVD factors of a 1-D matrix keeping singular values above `threshold` (and numerical zero)."""
    left, values, right_t = torch.linalg.svd(matrix.to(torch.float64), full_matrices=True)
    numerical_zero = values.max() * max(matrix.shape) * torch.finfo(torch.float64).eps
    kept = int((values > max(threshold, numerical_zero)).sum())
    if kept == 0:
        raise ValueError(f"every {axis} singular value is below threshold={threshold}; lower the threshold")
    left, values, right = left[:, :kept], values[:kept], right_t.T
    return {"V": right, "U": left,
            "A": (left * values) @ right[:, :kept].T,
            "pinv": (right[:, :kept] / values) @ left.T}, values


def _spectral_order(shape, kept):
    """Indices into the flattened (C, H, W) coefficients in spectral order (see the module docstring)."""
    index = torch.arange(shape[0] * shape[1] * shape[2]).reshape(shape)
    kept_h, kept_w = kept
    return torch.cat([index[:, :kept_h, :kept_w].reshape(-1), index[:, :kept_h, kept_w:].reshape(-1),
                      index[:, kept_h:, :].reshape(-1)])
