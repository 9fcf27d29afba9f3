"""DeepInverse (deepinv) interop: ipsolve operators and ε-models as deepinv physics and denoisers, and back.

* `to_deepinv(op, sigma_y)`: an SVD operator → a `DecomposablePhysics` (V_adjoint = Vt, V, U_adjoint =
  Ut padded with zeros, U, mask = the singular values padded with zeros on the null space, shape (1, D));
  a linear operator without an SVD → a `LinearPhysics`. A, A_adjoint, A_dagger are op.H, op.Ht,
  op.H_pinv (not deepinv's pseudo-inverse, which drops singular values below 1e-5).
* `from_deepinv(physics, input_shape)`: a `DecomposablePhysics` whose spectral coefficients are real and
  as many as the pixels → an `SVDOperator` (the nonzero mask entries are the singular values, their
  coefficients permuted first); any other `LinearPhysics` → a linear operator with H, Ht and a
  conjugate-gradient H_pinv (no SVD: pigdm, dps); a nonlinear `Physics` → a forward model for dps.
* `as_denoiser(model)` / `from_denoiser(denoiser, alphas_cumprod)`: an ε-model as a deepinv denoiser and
  back.

Ranges: deepinv images are in [0, 1] with noise σ in those units; ipsolve's are in [−1, 1] (model space).
A linear physics is the same matrix in both, so a measurement converts as y_model = 2 y_deepinv − A(1)
and its noise as σ_model = 2 σ_deepinv (`to_deepinv`'s sigma_y is in model units, the physics' noise
model gets σ_y/2). A nonlinear physics measures [0, 1] images: its forward model is x ↦ A((x + 1)/2),
and its measurements are used as they are.
Denoiser: D(x, σ) on x = x₀ + σ n in [0, 1] is x̂₀ of the ε-model at ᾱ = 1/(1 + 4σ²) (the model-space
noise 2σ of x̄ = x/√ᾱ), evaluated on x_t = √ᾱ (2x − 1) at the timestep whose ᾱ_t is nearest in log
signal-to-noise ratio: exact when σ = ½ √((1 − ᾱ_t)/ᾱ_t) for some t (`grid_sigmas`); D(x, 0) = x.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math

import torch

from degradations.base import SVDOperator, inverse_permutation
from degradations.linalg import conjugate_gradient
from solvers.common import has_svd

MISSING_EXTRA = "the deepinv extra is not installed: pip install 'ipsolve[deepinv]'"
MAX_RECORDED_VALUES = 65536  # a tensor parameter larger than this is not written into a JSON sidecar


def _deepinv():
    """The deepinv package, or ImportError in one line."""
    try:
        return importlib.import_module("deepinv")
    except ImportError:
        raise ImportError(MISSING_EXTRA) from None


# ---------------------------------------------------------------------------------------- ipsolve → deepinv
def to_deepinv(op, sigma_y: float | None = None, dtype: torch.dtype | None = None):
    """`op` as a deepinv physics: an SVD operator → `DecomposablePhysics`, a linear one → `LinearPhysics`.

    sigma_y (model units, as ipsolve's solvers take it): the physics gets `GaussianNoise(sigma_y / 2)`
    (deepinv's [0, 1] units); None: no noise model. dtype: that of the mask (the singular values), which
    deepinv's DDRM mixes with the images (default: torch's default dtype); the operator itself follows
    its input's dtype.
    """
    dinv = _deepinv()
    if not all(callable(getattr(op, name, None)) for name in ("H", "Ht", "H_pinv")):
        raise ValueError(f"to_deepinv takes linear operators (with H, Ht and H_pinv); "
                         f"{getattr(op, 'name', type(op).__name__)} has no adjoint")
    if sigma_y is not None and not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a finite number >= 0 (model units), got {sigma_y}")
    noise = dinv.physics.ZeroNoise() if sigma_y is None else dinv.physics.GaussianNoise(sigma=sigma_y / 2)
    physics_class = _classes().SVDPhysics if has_svd(op) else _classes().OperatorPhysics
    return physics_class(op, noise, dtype or torch.get_default_dtype())


@functools.cache
def _classes():
    """The deepinv subclasses, defined once deepinv is imported."""
    dinv = _deepinv()

    class OperatorPhysics(dinv.physics.LinearPhysics):
        """A linear ipsolve operator as a deepinv LinearPhysics: A = H, A_adjoint = Ht, A_dagger = H_pinv."""

        def __init__(self, op, noise_model, dtype):
            super().__init__(img_size=op.input_shape, noise_model=noise_model)
            self.op = op

        def A(self, x, **kwargs):
            return self.op.H(_fixed(self, x, kwargs))

        def A_adjoint(self, y, **kwargs):
            return self.op.Ht(_fixed(self, y, kwargs))

        def A_dagger(self, y, **kwargs):
            return self.op.H_pinv(_fixed(self, y, kwargs))

    class SVDPhysics(OperatorPhysics, dinv.physics.DecomposablePhysics):
        """An SVD operator as a DecomposablePhysics on flat spectral vectors (B, D); mask (1, D)."""

        def __init__(self, op, noise_model, dtype):
            singulars = torch.nn.functional.pad(op.singulars(), (0, op.dim - op.rank))
            dinv.physics.DecomposablePhysics.__init__(self, img_size=op.input_shape, noise_model=noise_model,
                                                       mask=singulars.to(dtype)[None])
            self.op = op

        def V_adjoint(self, x):
            return self.op.Vt(x)

        def V(self, z, **kwargs):
            return self.op.V(_fixed(self, z, kwargs))

        def U_adjoint(self, y, **kwargs):
            return torch.nn.functional.pad(self.op.Ut(_fixed(self, y, kwargs)), (0, self.op.dim - self.op.rank))

        def U(self, w):
            return self.op.U(w[:, :self.op.rank])

    class ModelDenoiser(dinv.models.Denoiser):
        """An ε-model as a deepinv denoiser (module docstring)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, sigma, **kwargs):
            if kwargs:
                raise ValueError(f"{', '.join(sorted(kwargs))}: not an option of an ipsolve model's denoiser")
            sigma = self._handle_sigma(sigma, batch_size=x.shape[0], ndim=x.ndim, device=x.device, dtype=x.dtype)
            if (sigma < 0).any():
                raise ValueError(f"sigma must be >= 0, got {sigma.flatten().tolist()}")
            noisy = 2 * x - 1
            sigma_model = 2 * sigma  # per row, (B, 1, 1, 1)
            a = 1 / (1 + sigma_model**2)
            t = nearest_timesteps(self.model.alphas_cumprod, a.flatten())
            eps = self.model(a.sqrt() * noisy, t)
            x0 = torch.where(sigma_model > 0, noisy - sigma_model * eps, noisy)
            return (x0 + 1) / 2

    return _Classes(OperatorPhysics, SVDPhysics, ModelDenoiser)


class _Classes:
    def __init__(self, OperatorPhysics, SVDPhysics, ModelDenoiser):
        self.OperatorPhysics, self.SVDPhysics, self.ModelDenoiser = OperatorPhysics, SVDPhysics, ModelDenoiser


def _fixed(physics, tensor, kwargs):
    """`tensor`, refusing deepinv's per-call parameter updates (a converted operator is fixed)."""
    if kwargs:
        raise ValueError(f"{', '.join(sorted(kwargs))}: a physics made by to_deepinv is fixed; build another "
                         f"operator and convert it instead")
    return tensor


# ---------------------------------------------------------------------------------------- denoisers
def as_denoiser(model):
    """The ε-model `model` (alphas_cumprod, model(x_t, t) → ε, [−1, 1] images) as a deepinv Denoiser
    D(x, σ) on [0, 1] images (module docstring: exact on `grid_sigmas`, nearest timestep between)."""
    _deepinv()
    return _classes().ModelDenoiser(model)


def grid_sigmas(alphas_cumprod) -> torch.Tensor:
    """The deepinv noise levels (in [0, 1] units) at which `as_denoiser` is exact: ½ √((1 − ᾱ_t)/ᾱ_t)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt() / 2


def nearest_timesteps(alphas_cumprod, a) -> torch.Tensor:
    """For each ᾱ in `a` (1-D), the timestep t whose ᾱ_t is nearest in log(ᾱ/(1 − ᾱ)) (long, a's device)."""
    grid = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device=a.device)
    log_snr = lambda values: values.log() - (-values).log1p()  # noqa: E731
    distance = (log_snr(grid)[None, :] - log_snr(a.to(torch.float64))[:, None]).abs()
    return distance.argmin(dim=1)


class DenoiserModel(torch.nn.Module):
    """A deepinv denoiser as an ipsolve ε-model on the schedule `alphas_cumprod` (`from_denoiser`)."""

    learned_sigma = False

    def __init__(self, denoiser, alphas_cumprod):
        super().__init__()
        self.denoiser = denoiser
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def forward(self, x_t, t, cond=None):
        if cond is not None:
            raise ValueError("a denoiser-backed model is unconditional: call it without cond")
        a = self.alphas_cumprod.to(x_t.device, x_t.dtype)[torch.as_tensor(t, device=x_t.device).reshape(-1)]
        a = a.expand(x_t.shape[0]).reshape(-1, *[1] * (x_t.ndim - 1))
        noisy = x_t / a.sqrt()  # x₀ + σ n in model space, σ = √((1 − ᾱ)/ᾱ)
        sigma = ((1 - a) / a).sqrt()
        x0 = 2 * self.denoiser((noisy + 1) / 2, (sigma / 2).flatten()) - 1
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def from_denoiser(denoiser, alphas_cumprod) -> DenoiserModel:
    """A deepinv denoiser D(x, σ) ([0, 1] images) as an ipsolve ε-model for the schedule `alphas_cumprod`:
    ε̂(x_t, t) = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t), x̂₀ = 2 D((x_t/√ᾱ_t + 1)/2, ½ √((1 − ᾱ_t)/ᾱ_t)) − 1."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if a.ndim != 1 or not ((a > 0) & (a < 1)).all():
        raise ValueError("alphas_cumprod must be a 1-D schedule with every value in (0, 1)")
    return DenoiserModel(denoiser, a)
