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
Denoiser: x = x₀ + σ n in [0, 1] is 2x − 1 = x₀' + 2σ n in model space, i.e. x_t = √ᾱ (2x − 1) with
ᾱ = 1/(1 + 4σ²); D(x, σ) = (x̂₀ + 1)/2 with x̂₀ = (2x − 1) − 2σ ε̂(x_t, t), t the timestep whose ᾱ_t is
nearest to ᾱ in log signal-to-noise ratio. It is the model's own x̂₀ when σ = ½ √((1 − ᾱ_t)/ᾱ_t) for some
t (`grid_sigmas`), one network call otherwise too; D(x, 0) = x; no clipping.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import types

import torch

from degradations.base import SVDOperator, inverse_permutation
from degradations.linalg import least_squares
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
    (deepinv's [0, 1] units); None: no noise model. dtype: that of the physics' buffers, the mask (the
    singular values) among them, which deepinv's DDRM mixes with the images (default: torch's default
    dtype); A, A_adjoint, A_dagger, U and V follow their input's dtype.
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
            self.to(dtype)

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
                                                       mask=singulars[None])
            self.op = op
            self.to(dtype)

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

    return types.SimpleNamespace(OperatorPhysics=OperatorPhysics, SVDPhysics=SVDPhysics, ModelDenoiser=ModelDenoiser)


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
    def log_snr(values):
        return values.log() - (-values).log1p()

    grid = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device=a.device)
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
    ε̂(x_t, t) = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t) with
    x̂₀ = 2 D((x_t/√ᾱ_t + 1)/2, ½ √((1 − ᾱ_t)/ᾱ_t)) − 1."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if a.ndim != 1 or not ((a > 0) & (a < 1)).all():
        raise ValueError("alphas_cumprod must be a 1-D schedule with every value in (0, 1)")
    return DenoiserModel(denoiser, a)


# ---------------------------------------------------------------------------------------- deepinv → ipsolve
def from_deepinv(physics, input_shape=None):
    """A deepinv physics as an ipsolve operator for images `input_shape` (C, H, W; default physics.img_size).

    A `DecomposablePhysics` with real spectral coefficients, one per pixel, and a real mask ≥ 0 →
    `DeepinvSVDOperator` (ddrm, ddnm, pigdm, dps, nested); another `LinearPhysics` →
    `DeepinvLinearOperator` (pigdm, dps); a nonlinear `Physics` → `DeepinvForward` (dps). The mask is
    read once, here. The operator's name is "deepinv.<class>"; its spec() records the physics when it can
    be rebuilt from its constructor's parameters (`physics_spec`).
    """
    dinv = _deepinv()
    if not isinstance(physics, dinv.physics.Physics):
        raise ValueError(f"from_deepinv takes a deepinv.physics.Physics, got {type(physics).__name__}")
    shape = _image_shape(physics, input_shape)
    name = f"deepinv.{type(physics).__name__}"
    probe = torch.zeros(1, *shape, dtype=_dtype(physics), device=_device(physics))
    measurement_shape = tuple(physics.A(probe).shape[1:])
    if not isinstance(physics, dinv.physics.LinearPhysics):
        return DeepinvForward(physics, shape, measurement_shape, name)
    if isinstance(physics, dinv.physics.DecomposablePhysics):
        spectrum = _real_spectrum(physics, probe)
        if spectrum is not None:
            return DeepinvSVDOperator(physics, shape, measurement_shape, name, *spectrum)
    return DeepinvLinearOperator(physics, shape, measurement_shape, name)


def _image_shape(physics, input_shape):
    shape = input_shape if input_shape is not None else getattr(physics, "img_size", None)
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        given = "" if input_shape is None else f", got {input_shape!r}"
        raise ValueError(f"from_deepinv needs input_shape=(C, H, W), the images {type(physics).__name__} "
                         f"measures{given}")
    return shape


def _dtype(physics):
    """The widest dtype of the physics' real floating buffers (a float64 filter beside deepinv's float32
    device marker: float64), torch's default when it has none."""
    dtypes = [b.dtype for b in physics.buffers() if b.is_floating_point()]
    return functools.reduce(torch.promote_types, dtypes) if dtypes else torch.get_default_dtype()


def _device(physics):
    return next((b.device for b in physics.buffers()), torch.device("cpu"))


def _real_spectrum(physics, probe):
    """(the mask broadcast over one image's spectral coefficients, flat (float64, CPU), the coefficients'
    shape) when the SVD is ipsolve's kind: real coefficients, as many as pixels, a real mask ≥ 0 shared by
    the batch; else None."""
    coefficients, residual = physics.V_adjoint(probe), physics.U_adjoint(physics.A(probe))
    mask = torch.as_tensor(physics.mask)
    if coefficients.is_complex() or mask.is_complex() or coefficients[0].numel() != probe[0].numel() \
            or residual.shape != coefficients.shape:
        return None
    try:
        mask = torch.broadcast_to(mask, coefficients.shape)
    except RuntimeError:
        return None
    mask = mask.reshape(-1).detach().to("cpu", torch.float64)
    return (mask, tuple(coefficients.shape[1:])) if (mask >= 0).all() and (mask > 0).any() else None


class _FromPhysics:
    """What every operator made from a physics shares: spec() (`physics_spec`, computed once) and repr."""

    def spec(self):
        if self._spec is None:
            self._spec = physics_spec(self.physics, self.input_shape, self.name)
        return self._spec

    def __repr__(self):
        return f"{type(self).__name__}({self.name}, {self.input_shape} → {self.measurement_shape})"


class DeepinvSVDOperator(_FromPhysics, SVDOperator):
    """A deepinv DecomposablePhysics A = U diag(mask) Vᵀ as an ipsolve SVD operator: Vt(x) is
    physics.V_adjoint(x) flattened and permuted to put the coefficients with a nonzero mask first (in
    their order), whose mask entries are the singular values; Ut(y) = those coefficients of
    physics.U_adjoint(y), U(w) = physics.U(w in those places, zeros elsewhere). H, Ht, H_pinv follow
    from these (`SVDOperator`), in the input's dtype."""

    def __init__(self, physics, input_shape, measurement_shape, name, mask, coefficient_shape):
        kept, null = torch.nonzero(mask > 0).reshape(-1), torch.nonzero(mask == 0).reshape(-1)
        super().__init__(input_shape, measurement_shape, mask[kept], name)
        self.physics, self.coefficient_shape = physics, coefficient_shape
        order = torch.cat([kept, null])
        self._register_index("order", order)
        self._register_index("inverse_order", inverse_permutation(order))
        self._register_index("kept", kept)
        self._spec = None

    def _Vt(self, x):
        coefficients = self.physics.V_adjoint(x).reshape(x.shape[0], -1)
        return coefficients.index_select(1, self._index("order", x)).to(x.dtype)

    def _V(self, z):
        flat = z.index_select(1, self._index("inverse_order", z))
        return self.physics.V(flat.reshape(z.shape[0], *self.coefficient_shape)).to(z.dtype)

    def _Ut(self, y):
        coefficients = self.physics.U_adjoint(y).reshape(y.shape[0], -1)
        return coefficients.index_select(1, self._index("kept", y)).to(y.dtype)

    def _U(self, w):
        flat = w.new_zeros(w.shape[0], self.dim).index_copy(1, self._index("kept", w), w)
        return self.physics.U(flat.reshape(w.shape[0], *self.coefficient_shape)).to(w.dtype)


class DeepinvLinearOperator(_FromPhysics):
    """A deepinv LinearPhysics as an ipsolve linear operator: H = A, Ht = A_adjoint, H_pinv by conjugate
    gradients on HᵀH x = Hᵀy (the least-norm least-squares solution, as `degradations.ComposedOperator`).
    No SVD: ddrm and ddnm refuse it, pigdm and dps take it."""

    has_svd = False

    def __init__(self, physics, input_shape, measurement_shape, name, pinv_iterations=500):
        self.physics, self.input_shape, self.measurement_shape = physics, input_shape, measurement_shape
        self.name, self.pinv_iterations, self._spec = name, pinv_iterations, None

    @property
    def dim(self):
        return math.prod(self.input_shape)

    def H(self, x):
        return self.physics.A(_checked(x, self.input_shape, "image batch", self.name)).to(x.dtype)

    def Ht(self, y):
        return self.physics.A_adjoint(_checked(y, self.measurement_shape, "measurement", self.name)).to(y.dtype)

    def H_pinv(self, y):
        return least_squares(self, y, self.pinv_iterations)


class DeepinvForward(_FromPhysics):
    """A nonlinear deepinv physics as a forward model for dps: H(x) = physics.A((x + 1)/2) on model-space
    images (deepinv measures [0, 1] images), so its measurements are used as they are."""

    has_svd = False

    def __init__(self, physics, input_shape, measurement_shape, name):
        self.physics, self.input_shape, self.measurement_shape = physics, input_shape, measurement_shape
        self.name, self._spec = name, None

    def H(self, x):
        return self.physics.A((_checked(x, self.input_shape, "image batch", self.name) + 1) / 2)

    forward = __call__ = H


def _checked(tensor, shape, what, name):
    if not torch.is_tensor(tensor) or tuple(tensor.shape[1:]) != tuple(shape):
        got = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
        raise ValueError(f"{name} expects a {what} of shape (B, {', '.join(map(str, shape))}), got {got}")
    return tensor


# ---------------------------------------------------------------------------------------- measurement files
NOT_RECORDED = {"device", "noise_model", "sensor_model", "rng"}  # the sidecar records σ_y; the rest is runtime


def physics_spec(physics, input_shape, name=None):
    """{"name": "deepinv", "channels", "image_size", "class": "deepinv.physics….", "params": {…}}: the
    physics' constructor parameters, read from its attributes of the same names (numbers, strings, shapes
    and tensors of at most MAX_RECORDED_VALUES values), and checked by rebuilding it (`from_spec`) and
    comparing A on a random image; ValueError in one line when it cannot be recorded so."""
    cls, what = type(physics), name or type(physics).__name__
    if not cls.__module__.startswith("deepinv.physics") or "<" in cls.__qualname__:
        raise ValueError(f"{what} cannot be recorded in a measurement file: only deepinv.physics classes are")
    params = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in NOT_RECORDED:
            continue
        if hasattr(physics, parameter.name):
            params[parameter.name] = _plain(getattr(physics, parameter.name), what, parameter.name)
        elif parameter.default is parameter.empty:
            raise ValueError(f"{what} cannot be recorded in a measurement file: it keeps no attribute for its "
                             f"parameter {parameter.name}")
    channels, height, width = input_shape
    spec = {"name": "deepinv", "channels": channels, "image_size": [height, width],
            "class": f"{cls.__module__}.{cls.__qualname__}", "params": params}
    probe = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0), dtype=_dtype(physics))
    probe = probe.to(_device(physics))
    rebuilt = _rebuild(spec).to(probe.device).A(probe)
    expected = physics.A(probe)
    if rebuilt.shape != expected.shape or not torch.allclose(rebuilt, expected, rtol=1e-5, atol=1e-6):
        raise ValueError(f"{what} cannot be recorded in a measurement file: rebuilt from its parameters "
                         f"({', '.join(params) or 'none'}) it is another operator")
    return spec


def from_spec(spec):
    """The operator a `physics_spec` records (`from_deepinv` of the rebuilt physics)."""
    return from_deepinv(_rebuild(spec), (spec["channels"], *spec["image_size"]))


def _rebuild(spec):
    module_name, _, class_name = str(spec.get("class", "")).rpartition(".")
    if not module_name.startswith("deepinv.physics"):
        raise ValueError(f"the deepinv physics {spec.get('class')!r} is not a deepinv.physics class")
    _deepinv()
    physics_class = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(physics_class, type):
        raise ValueError(f"deepinv {_deepinv().__version__} has no physics {spec['class']}")
    params = {key: _value(value) for key, value in dict(spec.get("params", {})).items()}
    try:
        return physics_class(**params)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise ValueError(f"the deepinv physics {spec['class']} cannot be rebuilt from {sorted(params)}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def _plain(value, what, parameter):
    """`value` as JSON (tensors as {"tensor": nested lists, "dtype"}), or ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list, torch.Size)):
        return [_plain(item, what, parameter) for item in value]
    if torch.is_tensor(value) and not value.is_complex() and value.numel() <= MAX_RECORDED_VALUES:
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    raise ValueError(f"{what} cannot be recorded in a measurement file: its parameter {parameter} is a "
                     f"{type(value).__name__}, not numbers, strings or a small real tensor")


def _value(recorded):
    if isinstance(recorded, dict) and set(recorded) == {"tensor", "dtype"}:
        dtype = getattr(torch, str(recorded["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"a recorded deepinv parameter has the dtype {recorded['dtype']!r}, which is no torch dtype")
        return torch.tensor(recorded["tensor"], dtype=dtype)
    return tuple(_value(item) for item in recorded) if isinstance(recorded, list) else recorded
