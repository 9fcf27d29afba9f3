"""Linear degradation operators with an exact, structured SVD (H = U Σ Vᵀ), as DDRM uses them.

Every operator maps images (B, C, H, W) to measurements (B, *measurement_shape) and implements
H, Ht, H_pinv and the spectral protocol V, Vt, U, Ut, singulars (see `degradations.base`).
`make(name, channels, image_size, seed, **params)` builds one by DDRM's --deg name.
`compose(first, second)` (or `second @ first`) chains linear operators; a composition has H, Ht and a
conjugate-gradient H_pinv but no SVD. `Saturation` (make name "saturate") is a nonlinear forward model.
"""
from .base import SVDOperator
from .bicubic import BicubicSR
from .colorization import GRAY_WEIGHTS, Colorization
from .composition import ComposedOperator, compose
from .compressed_sensing import WalshHadamardCS
from .deblurring import Deblurring, gaussian_kernel, uniform_kernel
from .denoising import Denoising
from .inpainting import Inpainting, box_mask, load_mask, random_mask
from .registry import make
from .saturation import Saturation
from .superresolution import SuperResolution

__all__ = [
    "SVDOperator", "Denoising", "SuperResolution", "Colorization", "Inpainting", "Deblurring", "BicubicSR",
    "WalshHadamardCS", "make", "random_mask", "box_mask", "load_mask", "uniform_kernel", "gaussian_kernel",
    "GRAY_WEIGHTS", "compose", "ComposedOperator", "Saturation",
]
