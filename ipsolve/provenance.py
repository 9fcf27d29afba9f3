"""What produced a stored result: short content fingerprints that make reuse safe.

A stored result is reused only when the fingerprint of everything that produced it (configuration,
model weights, input file bytes, seed, ipsolve version) equals the one of the work asked for now.
Fingerprints are SHA-256 digests of canonical JSON (sorted keys) or of raw bytes, cut to 16 hex digits.
"""
from __future__ import annotations

import hashlib
import json

import torch

DIGITS = 16


def fingerprint(data) -> str:
    """Digest of a JSON-serialisable value, independent of dict order."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGITS]


def file_fingerprint(path) -> str:
    """Digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:DIGITS]


def operator_key(spec: dict) -> dict:
    """An operator's spec (or `make` parameters) as a key holds it: a mask file's path, in any part, replaced
    by the fingerprint of its bytes, so a mask edited in place changes the key and a moved one does not."""
    if "parts" in spec:
        return dict(spec, parts=[operator_key(part) for part in spec["parts"]])
    return dict(spec, mask_path=file_fingerprint(spec["mask_path"])) if spec.get("mask_path") else spec


def model_fingerprint(model) -> str:
    """Digest of a model's numbers: its class, noise schedule, run options and every weight tensor.

    Works for any ε-model: an nn.Module's state dict, or else the tensors among its attributes (the
    exact priors), so two models that compute the same thing share a fingerprint whatever file they
    came from.
    """
    digest = hashlib.sha256(type(model).__qualname__.encode())
    options = {key: str(getattr(model, key)) for key in ("precision", "image_shape") if hasattr(model, key)}
    digest.update(json.dumps(options, sort_keys=True).encode())
    tensors = dict(model.state_dict()) if isinstance(model, torch.nn.Module) else {
        name: value for name, value in vars(model).items() if torch.is_tensor(value)}
    tensors["alphas_cumprod"] = torch.as_tensor(model.alphas_cumprod)
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:DIGITS]
