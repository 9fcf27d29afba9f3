"""Walsh–Hadamard compressed sensing: keep 1/ratio of the permuted orthonormal WHT coefficients.

Per channel, the image X (H, W) with H and W powers of two is transformed by the orthonormal
Walsh–Hadamard transform of its row-major pixel vector (Sylvester / natural order), which is
W_H X W_W with the normalised Hadamard matrices W_n = hadamard(n)/√n. A random permutation of the H·W
coefficient indices, drawn from `seed`, is shared by all channels; the first H·W/ratio permuted
coefficients of every channel are observed. This is the reference's WalshHadamardCS (cs2, cs4), with
the permutation drawn from an explicit seed.

Measurement shape (C, H·W/ratio); U = I, s ≡ 1, so H⁺ = Hᵀ. Spectral order: the observed
coefficients (C, M) first, then the unobserved ones (C, H·W − M), channel by channel.
"""
import torch

from .base import SVDOperator, check_channels, check_image_size, inverse_permutation


class WalshHadamardCS(SVDOperator):
    """(C, H, W) → (C, H·W/ratio): the observed permuted WHT coefficients of every channel."""

    def __init__(self, ratio, channels=3, image_size=(256, 256), seed=0):
        channels = check_channels(channels)
        height, width = check_image_size(image_size)
        for side in (height, width):
            if side & (side - 1):
                raise ValueError(f"Walsh-Hadamard sensing needs power-of-two image sides, got "
                                 f"{height}x{width}; resize to e.g. {1 << (height - 1).bit_length()}x"
                                 f"{1 << (width - 1).bit_length()}")
        pixels = height * width
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1 or pixels % ratio:
            raise ValueError(f"the compression ratio must be a positive integer dividing H*W={pixels}, "
                             f"got {ratio!r}")
        self.ratio = ratio
        self._observed = pixels // ratio
        super().__init__((channels, height, width), (channels, self._observed),
                         torch.ones(channels * self._observed, dtype=torch.float64), f"cs{ratio}",
                         {"seed": int(seed)})
        order = torch.randperm(pixels, generator=torch.Generator().manual_seed(int(seed)))
        offsets = torch.arange(channels).view(-1, 1) * pixels
        observed, unobserved = order[:self._observed], order[self._observed:]
        # indices into the flattened coefficients (C·H·W): observed ones first, channel by channel
        spectral_order = torch.cat([(offsets + observed).reshape(-1), (offsets + unobserved).reshape(-1)])
        self._register_index("observed", observed)
        self._register_index("order", spectral_order)
        self._register_index("inverse_order", inverse_permutation(spectral_order))
        self._register_factor("hadamard_h", normalised_hadamard(height))
        self._register_factor("hadamard_w", normalised_hadamard(width))

    def _transform(self, image):
        """Orthonormal WHT of every channel's row-major pixel vector; it is its own inverse."""
        return self._factor("hadamard_h", image) @ image @ self._factor("hadamard_w", image)

    def _Vt(self, x):
        return self._transform(x).reshape(x.shape[0], -1).index_select(1, self._index("order", x))

    def _V(self, z):
        coefficients = z.index_select(1, self._index("inverse_order", z))
        return self._transform(coefficients.reshape(z.shape[0], *self.input_shape))

    def _H(self, x):
        coefficients = self._transform(x).reshape(*x.shape[:2], -1)
        return coefficients.index_select(2, self._index("observed", x))

    def _Ht(self, y):
        coefficients = y.new_zeros(y.shape[0], self.input_shape[0], self.dim // self.input_shape[0])
        coefficients.index_copy_(2, self._index("observed", y), y)
        return self._transform(coefficients.reshape(y.shape[0], *self.input_shape))

    _H_pinv = _Ht


def normalised_hadamard(n):
    """The symmetric orthogonal Sylvester Hadamard matrix of order n (a power of two), divided by √n."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / n ** 0.5

