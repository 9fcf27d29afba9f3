"""Inpainting: H keeps the observed pixels (all channels of a pixel together), and mask makers."""
import math
import os

import torch

from .base import SVDOperator, check_channels, check_image_size, inverse_permutation


class Inpainting(SVDOperator):
    """(C, H, W) → (C, M): y = x[..., mask], the M pixels where `mask` (bool (H, W)) is True.

    V is a permutation (observed entries first, channel by channel, then the missing ones), U = I,
    s ≡ 1. H⁺ y = Hᵀ y = the image with zeros at the missing pixels.
    """

    def __init__(self, mask, channels=3):
        channels = check_channels(channels)
        mask = _check_mask(mask)
        height, width = mask.shape
        observed = int(mask.sum())
        pixels = height * width
        flat = mask.reshape(-1)
        observed_pixels = torch.nonzero(flat).reshape(-1)
        missing_pixels = torch.nonzero(~flat).reshape(-1)
        offsets = torch.arange(channels).view(-1, 1) * pixels
        # entry indices of the flattened image (C·H·W): observed entries first, channel by channel
        order = torch.cat([(offsets + observed_pixels).reshape(-1), (offsets + missing_pixels).reshape(-1)])
        super().__init__((channels, height, width), (channels, observed),
                         torch.ones(channels * observed, dtype=torch.float64), "inp_mask")
        self.mask = mask
        self._register_index("observed_pixels", observed_pixels)
        self._register_index("order", order)
        self._register_index("inverse_order", inverse_permutation(order))

    def _Vt(self, x):
        return x.reshape(x.shape[0], -1).index_select(1, self._index("order", x))

    def _V(self, z):
        image = z.index_select(1, self._index("inverse_order", z))
        return image.reshape(z.shape[0], *self.input_shape)

    def _H(self, x):
        pixels = x.reshape(*x.shape[:2], -1)
        return pixels.index_select(2, self._index("observed_pixels", x))

    def _Ht(self, y):
        image = y.new_zeros(y.shape[0], self.input_shape[0], self.dim // self.input_shape[0])
        image.index_copy_(2, self._index("observed_pixels", y), y)
        return image.reshape(y.shape[0], *self.input_shape)

    _H_pinv = _Ht


def _check_mask(mask):
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.ndim != 2:
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"the inpainting mask must be a bool tensor (H, W), True = observed; got {shape}")
    if not mask.any():
        raise ValueError("the inpainting mask observes no pixel; True must mark the observed pixels")
    return mask.detach().cpu()


def random_mask(image_size, fraction=0.5, seed=0):
    """A mask observing a random `fraction` of the pixels (floor of the missing count, as DDRM's H·W//2)."""
    height, width = check_image_size(image_size)
    if not 0 < fraction <= 1:
        raise ValueError(f"the observed fraction must be in (0, 1], got {fraction!r}")
    pixels = height * width
    missing = math.floor((1 - fraction) * pixels + 1e-9)
    generator = torch.Generator().manual_seed(int(seed))
    mask = torch.ones(pixels, dtype=torch.bool)
    mask[torch.randperm(pixels, generator=generator)[:missing]] = False
    return mask.reshape(height, width)


def box_mask(image_size, box=None):
    """A mask missing the rectangle box = (top, left, height, width); default: the centred half-size box."""
    height, width = check_image_size(image_size)
    if box is None:
        box = (height // 4, width // 4, height // 2, width // 2)
    top, left, box_height, box_width = (int(v) for v in box)
    if top < 0 or left < 0 or box_height < 1 or box_width < 1 \
            or top + box_height > height or left + box_width > width:
        raise ValueError(f"box {tuple(box)} = (top, left, height, width) must lie inside the "
                         f"{height}x{width} image")
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[top:top + box_height, left:left + box_width] = False
    return mask


def load_mask(path):
    """Read a mask image: white pixels are observed, black ones missing; any other value is refused
    (a grey, anti-aliased or lossy mask has no single meaning)."""
    from PIL import Image  # the one file-format dependency of this package, needed only here

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable mask image: {error}") from None
    values = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
    grey = int(((values != 0) & (values != 255)).sum())
    if grey:
        raise ValueError(f"{path} is not a binary mask: {grey} of its {values.numel()} pixels are neither black "
                         f"nor white; save it with white (observed) and black (missing) pixels only")
    return (values == 255).reshape(gray.height, gray.width)

