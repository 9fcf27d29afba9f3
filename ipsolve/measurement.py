"""Measurement files: a degraded image (PNG) plus a JSON sidecar describing how it was degraded.

``write_measurement("y.png", y, op, sigma_y)`` writes
* ``y.png``: the measurement as an 8-bit image, clipped to [0, 1] — 8-bit quantisation is what users'
  degraded files have anyway. Super-resolution writes the small image, colorization a gray image,
  denoising, deblurring and the saturating sensor a full-size image, inpainting the full-size image with
  the missing pixels at 0 (black) plus ``y.mask.png`` (white = observed); a composition ending in
  inpainting (e.g. deblur_gauss+inp) writes the image its inpainting part sees, with zeros and mask alike;
* ``y.png.json``: {"operator": op.spec(), "sigma_y": {"model": σ, "pixel": σ/2}, "mask": "y.mask.png"}.
  A DeepInverse physics (`ipsolve.interop.deepinv.from_deepinv`) records its class and constructor
  parameters, {"name": "deepinv", "class", "params", …}, or its spec() refuses when they cannot rebuild it.
  The library's sigma_y is in model units ([-1, 1]); pixel units ([0, 1]) are half of it.

``read_measurement("y.png")`` rebuilds (y, op, sigma_y) from the sidecar, which is checked: σ finite,
non-negative and the same in both units; the mask file it names present and binary. A task, σ or mask
given together with a sidecar must agree with it (`sidecar_conflicts`): a disagreement is an error,
never silently resolved either way. A plain image without a sidecar needs ``task=`` (a
``degradations.make`` name) and, for inpainting, ``mask=`` (a mask image path or a bool (H, W) tensor);
the clean image size is inferred (e.g. sr4 on a 16×24 image → 64×96).
Walsh–Hadamard measurements are coefficients, not images, and cannot be written as PNG.
"""
import json
import math
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
                         f"they cannot be written as a PNG measurement file")
    save_image(image, path)
    with atomic_path(sidecar_path(path)) as tmp, open(tmp, "w") as handle:
        json.dump(metadata, handle, indent=2)


class Sidecar(NamedTuple):
    """What a measurement's sidecar says, checked: the operator, σ_y in model units, the mask file, and
    the task name it records (an inpainting operator is rebuilt from its mask file as inp_mask)."""
    op: object
    sigma_y: float
    mask_file: str | None
    task: str


def has_sidecar(path) -> bool:
    return os.path.exists(sidecar_path(path))


def read_sidecar(path) -> Sidecar:
    """The checked sidecar of the measurement `path` (ValueError / FileNotFoundError with one line)."""
    where = sidecar_path(path)
    try:
        with open(where) as handle:
            metadata = json.load(handle)
        spec, sigma = dict(metadata["operator"]), metadata["sigma_y"]
        model, pixel = float(sigma["model"]), float(sigma.get("pixel", sigma["model"] / 2))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where} is not a measurement sidecar ({type(error).__name__}: {error})") from None
    if not (math.isfinite(model) and model >= 0):
        raise ValueError(f"{where}: sigma_y must be a finite number >= 0, got {model}")
    if not math.isclose(model, 2 * pixel, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{where}: sigma_y model {model} and pixel {pixel} disagree (model units are twice "
                         f"pixel units): fix one of them")
    mask_file, task = None, str(spec.get("name"))
    parts = [dict(part) for part in spec.get("parts", [spec])]
    if parts[-1].get("name", "").startswith("inp"):  # inpainting, alone or as the last part
        if not metadata.get("mask"):
            raise ValueError(f"{where} describes inpainting but names no mask file")
        mask_file = os.path.join(os.path.dirname(os.fspath(path)), metadata["mask"])
        if not os.path.isfile(mask_file):
            raise FileNotFoundError(f"{mask_file}: the mask file named by {where} is missing; put it back "
                                    f"beside the measurement")
        if parts[-1]["name"] == "inp_mask":  # the mask written beside the image is the one that made it
            parts[-1]["mask_path"] = mask_file
            spec = dict(spec, parts=parts) if "parts" in spec else parts[-1]
    try:
        op = _physics_from_spec(spec) if spec.get("name") == "deepinv" else degradations.make(**spec)
    except TypeError as error:
        raise ValueError(f"{where}: the operator {spec} cannot be rebuilt ({error})") from None
    if mask_file is not None and not torch.equal(degradations.load_mask(mask_file), _inpainting_part(op).mask):
        raise ValueError(f"{mask_file} is not the mask of the {task} operator that {where} records: "
                         f"restore the original mask file")
    return Sidecar(op, model, mask_file, task)


def sidecar_conflicts(sidecar: Sidecar, task=None, sigma_y=None, mask=None) -> list[tuple[str, object, object]]:
    """(what, given, recorded) for every given value that disagrees with `sidecar`.

    task: an operator name (it must be the recorded one); sigma_y in model units; mask: a mask file path
    or bool (H, W) tensor (it must hold the recorded mask)."""
    conflicts = []
    if task is not None and task != sidecar.task:
        conflicts.append(("task", task, sidecar.task))
    if sigma_y is not None and not math.isclose(float(sigma_y), sidecar.sigma_y, rel_tol=1e-9, abs_tol=1e-12):
        conflicts.append(("sigma_y", float(sigma_y), sidecar.sigma_y))
    if mask is not None:
        given = mask if torch.is_tensor(mask) else degradations.load_mask(mask)
        inpainting = _inpainting_part(sidecar.op)
        recorded = None if inpainting is None else inpainting.mask
        if recorded is None or tuple(given.shape) != tuple(recorded.shape) or not torch.equal(given, recorded):
            conflicts.append(("mask", mask if torch.is_tensor(mask) else os.fspath(mask),
                              sidecar.mask_file or "no mask"))
    return conflicts


def read_measurement(path, task=None, sigma_y=None, mask=None, image_size=None):
    """Read a measurement written by write_measurement, or a plain degraded image (see module doc).

    With a sidecar, task / sigma_y (model units) / mask may be given only when they agree with it;
    without one, sigma_y defaults to 0. image_size (H, W), when given, must agree with the size
    inferred from the file.
    """
    path = os.fspath(path)
    image = load_image(path)
    if has_sidecar(path):
        sidecar = read_sidecar(path)
        conflicts = sidecar_conflicts(sidecar, task, sigma_y, mask)
        if conflicts:
            what, given, recorded = conflicts[0]
            raise ValueError(f"{path}: {what}={given!r} disagrees with its sidecar ({recorded!r}); give no "
                             f"{what} or one that agrees")
        op, sigma_y = sidecar.op, sidecar.sigma_y
    else:
        if task is None:
            raise ValueError(f"{path} has no sidecar {os.path.basename(sidecar_path(path))}; "
                             f"pass task= (e.g. 'sr4', 'inp_mask'), and mask= for inpainting")
        op, sigma_y = _operator_for_image(path, image, task, mask), sigma_y or 0.0
    if image_size is not None and tuple(image_size) != op.input_shape[1:]:
        raise ValueError(f"{path} is a {op.name} measurement of a {op.input_shape[1]}x{op.input_shape[2]} "
                         f"image, not {image_size[0]}x{image_size[1]}; drop image_size or fix it")
    y = _image_to_measurement(path, image, op)
    return Measurement(y, op, float(sigma_y))


def _operator_for_image(path, image, task, mask):
    if "+" in task:  # a composition: the file holds what its last part measured, of the size the others keep
        *front, last = task.split("+")
        measured = _operator_for_image(path, image, last, mask)
        channels, height, width = measured.input_shape
        return degradations.compose(*(degradations.make(name, channels=channels, image_size=(height, width))
                                      for name in front), measured)
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


def _physics_from_spec(spec):
    """A DeepInverse physics recorded by `ipsolve.interop.deepinv.physics_spec`; ValueError (one line) when
    the deepinv extra is missing."""
    from .interop.deepinv import from_spec

    try:
        return from_spec(spec)
    except ImportError as error:
        raise ValueError(f"the measurement records a DeepInverse physics and {error}") from None


def _inpainting_part(op):
    """The Inpainting that makes op's measurement: op itself, or the last part of a composition; else None."""
    last = op.parts[-1] if isinstance(op, degradations.ComposedOperator) else op
    return last if isinstance(last, Inpainting) else None


def _is_image_shape(shape):
    return len(shape) == 3 and shape[0] in (1, 3)
