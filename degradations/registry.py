"""`make(name, ...)`: operators by DDRM's --deg names, and rebuilding from `op.spec()`.

Names: deno; sr<r> (block averaging); color; inp (random `fraction` = 0.5 of the pixels observed, drawn
from `seed`), inp_box (`box` = (top, left, height, width) missing, default the centred half-size box),
inp_mask (`mask` = bool (H, W), True = observed, or `mask_path` = an image, white = observed; either
also overrides the recipe of inp and inp_box);
deblur_uni (`width` = 9), deblur_gauss (`sigma` = 10, `width` = 5), deblur_aniso (`sigma_h` = 1 vertical,
`sigma_w` = 20 horizontal, `width` = 9), deblur (explicit `kernel_h`, `kernel_w`), all with `boundary`
and `threshold`; sr_bicubic<r> (`threshold`); cs<r> (Walsh–Hadamard, 1/r of the coefficients, `seed`).
saturate (`gain` = 2: the nonlinear y = tanh(gain·x)/tanh(gain), for DPS).
Compositions: "a+b" is b ∘ a (e.g. deblur_gauss+inp: blur, then keep half the pixels), built from `parts`
(one spec per operator, as `op.spec()` records them) or, without it, from the names with their defaults,
each part taking the image its predecessor measures.
"""
import inspect
import re

from .bicubic import BicubicSR
from .colorization import Colorization
from .composition import compose
from .compressed_sensing import WalshHadamardCS
from .deblurring import Deblurring, gaussian_kernel, uniform_kernel
from .denoising import Denoising
from .inpainting import Inpainting, box_mask, load_mask, random_mask
from .saturation import Saturation
from .superresolution import SuperResolution


def make(name, channels=3, image_size=(256, 256), seed=0, **params):
    """Build the operator `name` for images (channels, *image_size); see the module docstring."""
    if "+" in str(name):
        return _composition(str(name), channels, image_size, seed, **params)
    for pattern, build in _FAMILIES:
        match = re.fullmatch(pattern, str(name))
        if match:
            arguments = (*match.groups(),)
            keywords = dict(channels=channels, image_size=image_size, seed=seed, **params)
            try:
                inspect.signature(build).bind(*arguments, **keywords)
            except TypeError as error:
                raise ValueError(f"bad parameters for {name}: {error}") from None
            return build(*arguments, **keywords)
    raise ValueError(f"unknown degradation {name!r}; use one of deno, sr<r>, color, inp, inp_box, inp_mask, "
                     f"deblur_uni, deblur_gauss, deblur_aniso, deblur, sr_bicubic<r>, cs<r>, saturate, "
                     f"or a composition a+b")


def _composition(name, channels, image_size, seed, parts=None, **params):
    if params:
        raise ValueError(f"{name}: give the parts' parameters as parts=[spec, …] (one op.spec() per part), "
                         f"not {', '.join(sorted(params))}=")
    names = name.split("+")
    if parts is None:
        ops = []
        for part in names:
            if ops and len(ops[-1].measurement_shape) != 3:
                raise ValueError(f"{name}: {ops[-1].name} does not measure an image, so nothing can follow it")
            shape = ops[-1].measurement_shape if ops else (channels, *image_size)
            ops.append(make(part, channels=shape[0], image_size=shape[1:], seed=seed))
    else:
        ops = [make(**dict(part)) for part in parts]
    op = compose(*ops)
    if op.name != name or op.input_shape != (channels, *(int(n) for n in image_size)):
        raise ValueError(f"the parts {op.name} for {tuple(op.input_shape)} images do not match "
                         f"{name} for {(channels, *image_size)} images")
    return op


def _denoising(channels, image_size, seed):
    return Denoising(channels, image_size)


def _block_sr(factor, channels, image_size, seed):
    return SuperResolution(int(factor), channels, image_size)


def _colorization(channels, image_size, seed):
    return Colorization(image_size, channels)


def _random_inpainting(channels, image_size, seed, fraction=0.5, mask=None, mask_path=None):
    if mask is not None or mask_path is not None:
        return _mask_inpainting(channels, image_size, seed, mask, mask_path)
    op = Inpainting(random_mask(image_size, fraction, seed), channels)
    return _named(op, "inp", seed=int(seed), fraction=fraction)


def _box_inpainting(channels, image_size, seed, box=None, mask=None, mask_path=None):
    if mask is not None or mask_path is not None:
        return _mask_inpainting(channels, image_size, seed, mask, mask_path)
    mask = box_mask(image_size, box)
    height, width = mask.shape
    box = box if box is not None else (height // 4, width // 4, height // 2, width // 2)
    return _named(Inpainting(mask, channels), "inp_box", box=[int(v) for v in box])


def _mask_inpainting(channels, image_size, seed, mask=None, mask_path=None):
    if (mask is None) == (mask_path is None):
        raise ValueError("inp_mask needs exactly one of mask= (bool (H, W), True = observed) or mask_path=")
    if mask_path is not None:
        mask = load_mask(mask_path)
    op = Inpainting(mask, channels)
    if tuple(mask.shape) != tuple(image_size):
        raise ValueError(f"the mask is {mask.shape[0]}x{mask.shape[1]} but image_size is "
                         f"{image_size[0]}x{image_size[1]}; give a mask of the image's size")
    return op if mask_path is None else _named(op, "inp_mask", mask_path=str(mask_path))


def _uniform_deblurring(channels, image_size, seed, width=9, boundary="reflect", threshold=0.0):
    op = Deblurring(uniform_kernel(width), None, channels, image_size, boundary, threshold)
    return _named(op, "deblur_uni", width=width, boundary=boundary, threshold=threshold)


def _gaussian_deblurring(channels, image_size, seed, sigma=10.0, width=5, boundary="reflect",
                         threshold=0.0):
    op = Deblurring(gaussian_kernel(sigma, width), None, channels, image_size, boundary, threshold)
    return _named(op, "deblur_gauss", sigma=sigma, width=width, boundary=boundary, threshold=threshold)


def _anisotropic_deblurring(channels, image_size, seed, sigma_h=1.0, sigma_w=20.0, width=9,
                            boundary="reflect", threshold=0.0):
    op = Deblurring(gaussian_kernel(sigma_h, width), gaussian_kernel(sigma_w, width), channels,
                    image_size, boundary, threshold)
    return _named(op, "deblur_aniso", sigma_h=sigma_h, sigma_w=sigma_w, width=width, boundary=boundary,
                  threshold=threshold)


def _deblurring(channels, image_size, seed, kernel_h, kernel_w=None, boundary="reflect", threshold=0.0):
    return Deblurring(kernel_h, kernel_w, channels, image_size, boundary, threshold)


def _bicubic_sr(factor, channels, image_size, seed, threshold=3e-2):
    return BicubicSR(int(factor), channels, image_size, threshold)


def _compressed_sensing(ratio, channels, image_size, seed):
    return WalshHadamardCS(int(ratio), channels, image_size, seed)


def _saturation(channels, image_size, seed, gain=2.0):
    return Saturation(gain, channels, image_size)


def _named(op, name, **spec_params):
    """Give an operator built by a named recipe that recipe's name and parameters for spec()."""
    op.name = name
    op._spec_params = spec_params
    return op


_FAMILIES = [
    (r"deno", _denoising),
    (r"sr(\d+)", _block_sr),
    (r"color", _colorization),
    (r"inp", _random_inpainting),
    (r"inp_box", _box_inpainting),
    (r"inp_mask", _mask_inpainting),
    (r"deblur_uni", _uniform_deblurring),
    (r"deblur_gauss", _gaussian_deblurring),
    (r"deblur_aniso", _anisotropic_deblurring),
    (r"deblur", _deblurring),
    (r"sr_bicubic(\d+)", _bicubic_sr),
    (r"cs(\d+)", _compressed_sensing),
    (r"saturate", _saturation),
]
