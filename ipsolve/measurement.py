"""Measurement files: a degraded image (PNG) plus a JSON sidecar describing how it was degraded.

``write_measurement("y.png", y, op, sigma_y)`` writes
* ``y.png``: the measurement as an 8-bit image, clipped to [0, 1] — 8-bit quantisation is what users'
  degraded files have anyway. Super-resolution writes the small image, colorization a gray image,
  denoising, deblurring and the saturating sensor a full-size image, inpainting the full-size image with
  the missing pixels at 0 (black) plus ``y.mask.png`` (white = observed); a composition ending in
  inpainting (e.g. deblur_gauss+inp) writes the image its inpainting part sees, with zeros and mask alike;
* ``y.png.json``: {"operator": op.spec(), "sigma_y": {"model": σ, "pixel": σ/2}, "mask": "y.mask.png"}.
  The library's sigma_y is in model units ([-1, 1]); pixel units ([0, 1]) are half of it.

``read_measurement("y.png")`` rebuilds (y, op, sigma_y) from the sidecar. A plain image without a
sidecar needs ``task=`` (a ``degradations.make`` name) and, for inpainting, ``mask=`` (a mask image path
or a bool (H, W) tensor); the clean image size is inferred (e.g. sr4 on a 16×24 image → 64×96).
Walsh–Hadamard measurements are coefficients, not images, and cannot be written as PNG.
"""
import json
import os
import re
from typing import NamedTuple

import torch

import degradations
from degradations import Inpainting

from .imageio import atomic_path, from_model, load_image, save_image, to_model


class Measurement(NamedTuple):
    y: torch.Tensor        # (1, *op.measurement_shape), model space
    op: object             # a degradations operator
    sigma_y: float         # model units


def sidecar_path(path):
    return os.fspath(path) + ".json"


def mask_path_for(path):
    """``dir/NAME.png`` → ``dir/NAME.mask.png``."""
    stem = os.path.splitext(os.fspath(path))[0]
    return stem + ".mask.png"


def write_measurement(path, y, op, sigma_y):
    """Write y (model space, (1, *op.measurement_shape) or op.measurement_shape) as PATH + PATH.json."""
    path = os.fspath(path)
    y = y.detach().to("cpu", torch.float64)
    if tuple(y.shape) == op.measurement_shape:
        y = y[None]
    if tuple(y.shape) != (1, *op.measurement_shape):
        raise ValueError(f"write_measurement takes one measurement of shape {op.measurement_shape}, "
                         f"got {tuple(y.shape)}")
    metadata = {"operator": op.spec(), "sigma_y": {"model": float(sigma_y), "pixel": float(sigma_y) / 2}}
    inpainting = _inpainting_part(op)
    if inpainting is not None:
        mask = inpainting.mask
        image = from_model(inpainting.Ht(y))[0] * mask
        save_image(mask[None].to(torch.float32), mask_path_for(path))
        metadata["mask"] = os.path.basename(mask_path_for(path))
    elif _is_image_shape(op.measurement_shape):
        image = from_model(y[0])
    else:
        raise ValueError(f"{op.name} measurements of shape {op.measurement_shape} are not images; "
                         f"save them with torch.save instead")
    save_image(image, path)
    with atomic_path(sidecar_path(path)) as tmp, open(tmp, "w") as handle:
        json.dump(metadata, handle, indent=2)


def read_measurement(path, task=None, sigma_y=None, mask=None, image_size=None):
    """Read a measurement written by write_measurement, or a plain degraded image (see module doc).

    sigma_y (model units) overrides the sidecar's; without sidecar it defaults to 0.
    image_size (H, W), when given, must agree with the size inferred from the file.
    """
    path = os.fspath(path)
    image = load_image(path)
    if os.path.exists(sidecar_path(path)):
        op, recorded_sigma = _operator_from_sidecar(path)
    else:
        if task is None:
            raise ValueError(f"{path} has no sidecar {os.path.basename(sidecar_path(path))}; "
                             f"pass task= (e.g. 'sr4', 'inp_mask'), and mask= for inpainting")
        op, recorded_sigma = _operator_for_image(path, image, task, mask), 0.0
    if image_size is not None and tuple(image_size) != op.input_shape[1:]:
        raise ValueError(f"{path} is a {op.name} measurement of a {op.input_shape[1]}x{op.input_shape[2]} "
                         f"image, not {image_size[0]}x{image_size[1]}; drop image_size or fix it")
    y = _image_to_measurement(path, image, op)
    return Measurement(y, op, float(recorded_sigma if sigma_y is None else sigma_y))


def _operator_from_sidecar(path):
    with open(sidecar_path(path)) as handle:
        try:
            metadata = json.load(handle)
            spec, sigma = dict(metadata["operator"]), metadata["sigma_y"]["model"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{sidecar_path(path)} is not a measurement sidecar: {error}") from None
    last = dict(spec["parts"][-1]) if "parts" in spec else spec
    if last["name"] == "inp_mask":  # the mask written beside the image is the one to use
        last.pop("mask_path", None)
        mask_file = os.path.join(os.path.dirname(path), metadata.get("mask", ""))
        last["mask"] = degradations.load_mask(mask_file)
        if "parts" in spec:
            spec["parts"] = [*spec["parts"][:-1], last]
    return degradations.make(**spec), sigma


def _operator_for_image(path, image, task, mask):
    channels, height, width = image.shape
    factor = re.fullmatch(r"(?:sr|sr_bicubic)(\d+)", task)
    if factor:
        size = (height * int(factor.group(1)), width * int(factor.group(1)))
        return degradations.make(task, channels=channels, image_size=size)
    if task == "color":
        return degradations.make(task, channels=3, image_size=(height, width))
    if task.startswith("inp"):
        if mask is None:
            raise ValueError(f"{path} has no sidecar: inpainting needs mask= (a mask image, white = "
                             f"observed, or a bool (H, W) tensor)")
        key = "mask" if torch.is_tensor(mask) else "mask_path"
        return degradations.make("inp_mask", channels=channels, image_size=(height, width), **{key: mask})
    return degradations.make(task, channels=channels, image_size=(height, width))


def _image_to_measurement(path, image, op):
    """The image file's pixels → y (1, *op.measurement_shape) in model space, or ValueError."""
    inpainting = _inpainting_part(op)
    if inpainting is not None:
        expected = inpainting.input_shape
    elif _is_image_shape(op.measurement_shape):
        expected = op.measurement_shape
    else:
        raise ValueError(f"{op.name} measurements are not images; {path} cannot hold one")
    if expected[0] == 1 and image.shape[0] == 3 and torch.equal(image[0], image[1]) \
            and torch.equal(image[1], image[2]):
        image = image[:1]  # a gray image stored as RGB
    if tuple(image.shape) != expected:
        raise ValueError(f"{path} is {'x'.join(map(str, image.shape))} (channels x H x W) but {op.name} "
                         f"expects {'x'.join(map(str, expected))}; check the task and image size")
    values = to_model(image)[None]
    return inpainting.H(values) if inpainting is not None else values


def _inpainting_part(op):
    """The Inpainting that makes op's measurement: op itself, or the last part of a composition; else None."""
    last = op.parts[-1] if isinstance(op, degradations.ComposedOperator) else op
    return last if isinstance(last, Inpainting) else None


def _is_image_shape(shape):
    return len(shape) == 3 and shape[0] in (1, 3)
