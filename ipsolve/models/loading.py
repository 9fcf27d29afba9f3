"""`load_model(name_or_path)`: every model ipsolve can run, as an ε-model with ``alphas_cumprod``.

Names and where their files are looked for:

- ``"embedded"``: the small MNIST 32×32 DDPM shipped in ``ipsolve/weights/`` (trained by
  ``scripts/train_embedded.py``).
- ``"celeba_hq"`` (any packaged ``ipsolve/configs/models/NAME.yml`` with a ``weights:`` section): the DDRM/SDEdit
  checkpoint ``weights.file`` in the weights folder, ``$IPSOLVE_WEIGHTS`` or else
  ``~/.cache/ipsolve/weights``; its SHA-256 is checked (streaming) when the config records one.
- ``"sd15"``, ``"dit"``: latent pipelines under ``$IPSOLVE_WEIGHTS`` (see ``ipsolve.models.latent``).
- ``"gaussian:CxHxW"``: the exact prior N(0, 0.25 I) on that shape (smoke tests; O(C·H·W) closed forms).
- a path: a ``.ckpt`` / ``.pt`` DDPMUNet state dict (its config from ``config=``, from ``PATH.yml`` next
  to it, or from the packaged ``configs/models/STEM.yml``), a diffusers ``UNet2DModel`` folder, or a latent pipeline
  folder.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ipsolve.config import read_yaml
from ipsolve.models.diffusion import DiffusionModel
from ipsolve.models.schedules import alphas_cumprod_from_betas, betas_from_config
from ipsolve.models.unet import DDPMUNet

WEIGHTS_ENV = "IPSOLVE_WEIGHTS"
PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"  # packaged with ipsolve
EMBEDDED = PACKAGE_WEIGHTS / "embedded_mnist32.pt"
LATENT_NAMES = ("sd15", "dit")


def weights_dir() -> Path:
    """Where named checkpoints are looked for: ``$IPSOLVE_WEIGHTS``, else ``~/.cache/ipsolve/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "ipsolve" / "weights")


def load_model(name_or_path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None, *,
               precision: str = "fp32", channels_last: bool | None = None,
               config: str | os.PathLike | Mapping | None = None, sha256: str | None = None):
    """The model called ``name_or_path`` (see the module docstring) on ``device``, parameters in ``dtype``.

    ``precision`` "fp16" / "bf16" runs the network under autocast (inputs and outputs keep the caller's
    dtype); ``channels_last`` defaults to True on CUDA. Missing or unreadable files raise a one-line
    FileNotFoundError / ValueError saying what was expected and how to get it.
    """
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    options = {"precision": precision, "channels_last": channels_last}
    name = os.fspath(name_or_path)

    if name.startswith("gaussian:"):
        return _gaussian_prior(name, device)
    if name in LATENT_NAMES:
        from ipsolve.models.latent import load_latent_model, named_weights_folder
        return load_latent_model(named_weights_folder(name), device=device, dtype=dtype)
    if name == "embedded":
        return load_checkpoint(EMBEDDED, EMBEDDED.with_suffix(".yml"), device, dtype, sha256=sha256, **options)
    named = _named_checkpoints()
    if name in named:
        return load_checkpoint(weights_dir() / named[name], config or MODEL_CONFIGS / f"{name}.yml", device, dtype,
                               sha256=sha256, **options)

    path = Path(name).expanduser()
    if path.is_dir():
        from ipsolve.models.diffusers_unet import is_unet_folder, load_diffusers_unet
        from ipsolve.models.latent import is_latent_folder, load_latent_model
        if is_unet_folder(path):
            return load_diffusers_unet(path, device=device, dtype=dtype, **options)
        if is_latent_folder(path):
            return load_latent_model(str(path), device=device, dtype=dtype)
        raise ValueError(f"{path} is neither a diffusers UNet2DModel folder nor a Stable Diffusion / DiT pipeline")
    if path.is_file():
        if config is None:
            config = _config_for(path)
        return load_checkpoint(path, config, device, dtype, sha256=sha256, **options)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        raise FileNotFoundError(f"{path} not found")
    known = ", ".join(["embedded", *sorted(named), *LATENT_NAMES, "gaussian:CxHxW"])
    raise ValueError(f"unknown model {name!r}: give a checkpoint path, a diffusers folder or one of {known}")


def load_checkpoint(path: Path, config, device="cpu", dtype=None, *, sha256: str | None = None,
                    **options) -> DiffusionModel:
    """A DDPMUNet checkpoint (DDRM/SDEdit layout) with the YAML ``config`` (path or mapping) that built it."""
    config = _read_config(config) if not isinstance(config, Mapping) else config
    expected = config.get("weights") or {}
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {_how_to_get(path, expected)}")
    digest = sha256 or expected.get("sha256")
    if digest and file_sha256(path) != digest.lower():
        raise ValueError(f"{path} is corrupt or a different file: its SHA-256 is not {digest} "
                         f"({_how_to_get(path, expected)})")
    state = _read_state_dict(path, expected)

    image_size = config["data"]["image_size"]
    net = DDPMUNet.from_config(config["model"], image_size=image_size)
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: {len(missing)} missing keys (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    net.load_state_dict(state)
    net.to(device=device, dtype=dtype)
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(config["diffusion"]))
    return DiffusionModel(net, alphas_cumprod, (net.in_channels, image_size, image_size), **options)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _named_checkpoints() -> dict[str, str]:
    """Model name → checkpoint file name, for every packaged ``configs/models/NAME.yml`` with ``weights.file``."""
    named = {}
    for config_path in sorted(MODEL_CONFIGS.glob("*.yml")):
        file = (_read_config(config_path).get("weights") or {}).get("file")
        if file:
            named[config_path.stem] = file
    return named


def _read_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} not found")
    return read_yaml(path)


def _config_for(checkpoint: Path) -> Path:
    """The YAML beside a checkpoint (or the named config of its stem); a file that is no checkpoint at
    all is reported as such first, since a config would not help it."""
    for candidate in (checkpoint.with_suffix(".yml"), MODEL_CONFIGS / f"{checkpoint.stem}.yml"):
        if candidate.is_file():
            return candidate
    _read_state_dict(checkpoint, {})
    raise ValueError(f"{checkpoint} has no model config: put {checkpoint.with_suffix('.yml').name} (a DDRM YAML "
                     f"with model, data and diffusion sections) next to it")


def _how_to_get(path: Path, expected: Mapping) -> str:
    if "size_mb" in expected:
        size = f"~{expected['size_mb']} MB"
    else:
        size = f"{expected['size_bytes']:,} bytes" if "size_bytes" in expected else "size unknown"
    where = f"; get it from {' '.join(expected['source'].split())}" if "source" in expected else ""
    return (f"expected {expected.get('file', path.name)} ({size}){where}; "
            f"put it in ${WEIGHTS_ENV} or ~/.cache/ipsolve/weights, or pass its path")


def _read_state_dict(path: Path, expected: Mapping) -> dict:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        fix = _how_to_get(path, expected) if expected else "give the path of a DDPM state dict (.ckpt / .pt)"
        raise ValueError(f"{path} is corrupt or not a checkpoint ({reason}); {fix}") from None
    if isinstance(loaded, (list, tuple)) and loaded:  # DDIM-style [state_dict, optimizer, …]
        loaded = loaded[0]
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict; {_how_to_get(path, expected)}")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _key_mismatch(net: torch.nn.Module, state: Mapping) -> tuple[list, list]:
    own = net.state_dict()
    missing = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    unexpected = [k for k in state if k not in own]
    return missing, unexpected


def _gaussian_prior(name: str, device):
    """``gaussian:CxHxW`` → N(0, 0.25 I) on that shape with the linear DDPM schedule."""
    from ipsolve.models.priors import IsotropicGaussianPrior
    try:
        shape = tuple(int(n) for n in name.split(":", 1)[1].lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name!r}: write the shape as gaussian:CxHxW, e.g. gaussian:3x16x16")
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(
        {"beta_start": 1e-4, "beta_end": 0.02, "num_diffusion_timesteps": 1000}))
    return IsotropicGaussianPrior(torch.zeros(shape, device=device), 0.25, alphas_cumprod)
