"""Reading and writing images: PNG/JPEG in, [0, 1] float tensors out, atomic writes.

Images are float tensors (C, H, W) or batches (B, C, H, W) with values in [0, 1]; `to_model` and
`from_model` convert to and from the model space [-1, 1]. Every writer goes through `atomic_path`, so a
reader never sees a half-written file.
"""
import contextlib
import os
import uuid

import numpy as np
import torch
from PIL import Image

_MODES = (None, "RGB", "L")


def to_model(x):
    """[0, 1] image → model space [-1, 1]."""
    return 2 * x - 1


def from_model(x):
    """Model space [-1, 1] → [0, 1] image (not clamped)."""
    return (x + 1) / 2


def std_from_model(std):
    """A standard deviation in model units ([-1, 1] images) → [0, 1] pixel units (half of it)."""
    return std / 2


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it onto `path` when the block succeeds."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # name the file the user knows (not the temporary one): "…/x.png: No space left"
        raise OSError(error.errno, error.strerror or str(error), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_image(path, mode=None):
    """Read an image file as float32 (C, H, W) in [0, 1].

    mode: None keeps gray images gray (C = 1) and makes everything else RGB (C = 3);
    "RGB" or "L" converts.
    """
    if mode not in _MODES:
        raise ValueError(f"image mode must be None, 'RGB' or 'L', not {mode!r}")
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from None
    if mode is None:
        mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    array = _to_unit_array(image, mode)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _to_unit_array(image, mode):
    """float32 array in [0, 1]; 16-bit and float gray images keep their precision."""
    if mode == "L" and image.mode in ("I", "I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "L" and image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0


def to_pil(image):
    """(C, H, W) tensor in [0, 1] (clamped) → 8-bit PIL image; C must be 1 or 3."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"an image must be (1 or 3, H, W), got shape {tuple(image.shape)}")
    array = image.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def _write(pil_image, path, **options):
    with atomic_path(path) as tmp:
        pil_image.save(tmp, format=_format_of(path), **options)


def _format_of(path):
    extension = os.path.splitext(os.fspath(path))[1].lower()
    formats = Image.registered_extensions()
    if extension not in formats:
        raise ValueError(f"{os.fspath(path)}: unknown image extension {extension!r}; use .png or .jpg")
    return formats[extension]


def save_image(x, path):
    """Save an image (C, H, W) or a batch (B, C, H, W) as a grid; values are clamped to [0, 1]."""
    if x.ndim == 4:
        save_grid(x, path)
        return
    _write(to_pil(x), path)


def grid_image(images, nrow=None):
    """One (C, H, W) picture of a batch (B, C, H, W) or a list of (C, H, W) images, `nrow` tiles a row
    (default ~√B) with a 2-pixel white border around every tile; a single image is returned as it is."""
    images = torch.stack(list(images)) if not torch.is_tensor(images) else images
    if images.ndim != 4:
        raise ValueError(f"a grid needs images (B, C, H, W), got shape {tuple(images.shape)}")
    images = images.detach().float().clamp(0, 1)
    count, channels, height, width = images.shape
    if count == 1:
        return images[0]
    columns = min(count, nrow or max(1, int(np.ceil(np.sqrt(count)))))
    rows = -(-count // columns)
    pad = 2
    grid = images.new_ones(channels, rows * (height + pad) + pad, columns * (width + pad) + pad)
    for index, image in enumerate(images):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_grid(images, path, nrow=None):
    """Save a batch (B, C, H, W) or a list of (C, H, W) images as one grid."""
    _write(to_pil(grid_image(images, nrow)), path)


def save_picture(picture, path):
    """Save a PIL image (a figure) atomically."""
    _write(picture, path)


def save_gif(frames, path, duration_ms=400):
    """Save frames (PIL images, or (C, H, W) tensors in [0, 1]) as a looping animated GIF."""
    pictures = [frame if isinstance(frame, Image.Image) else to_pil(frame) for frame in frames]
    if not pictures:
        raise ValueError("save_gif needs at least one frame")
    with atomic_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=duration_ms, loop=0)
