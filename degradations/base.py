"""The SVD operator protocol: H = U Σ Vᵀ, applied through structured factors, never as a dense matrix.

An operator maps images x (B, C, H, W) to measurements y (B, *measurement_shape).

* ``Vt(x)`` → (B, D) spectral coefficients, D = C·H·W, and ``V(z)`` back (V is orthogonal);
* ``Ut(y)`` → (B, k) and ``U(w)`` → (B, *measurement_shape); Ut(U(w)) = w. Usually k = m (U orthogonal);
  when H is rank-deficient k < m and U U ᵀ projects onto the range of H;
* ``singulars()`` → s, float64 CPU, length k, all > 0; coefficient i < k of Vt pairs with s[i], the
  coefficients k … D−1 span the null space.

Then H x = U(s ⊙ Vt(x)[:, :k]), Hᵀ y = V(pad(s ⊙ Ut(y))), H⁺ y = V(pad(Ut(y) / s)); H⁺ is the
pseudo-inverse of H (of the kept spectrum when small singular values were dropped). Subclasses implement
``_V`` and ``_Vt`` (and ``_U``, ``_Ut`` when U is not the identity on the flattened measurement) and
may override ``_H``, ``_Ht``, ``_H_pinv`` with direct formulas.
The public methods validate their input and follow its dtype and device.
"""
import math

import torch

from .composition import compose


class SVDOperator:
    """Base class: validation, derived H / Hᵀ / H⁺, spec() and per-(dtype, device) factor caches."""

    def __init__(self, input_shape, measurement_shape, singulars, name, spec_params=None):
        self.input_shape = tuple(int(n) for n in input_shape)
        self.measurement_shape = tuple(int(n) for n in measurement_shape)
        self._singulars = singulars.to(torch.float64).cpu()
        self.name = name
        self._spec_params = dict(spec_params or {})
        self._cpu_factors = {"singulars": self._singulars}
        self._cpu_indices = {}
        self._cached_factors = {}

    # ------------------------------------------------------------------ public interface
    @property
    def rank(self):
        """k: the number of spectral coefficients with a nonzero singular value."""
        return self._singulars.numel()

    @property
    def dim(self):
        """D = C·H·W."""
        return math.prod(self.input_shape)

    def singulars(self):
        """Singular values s (float64, CPU, length k), paired with Vt(x)[:, :k]."""
        return self._singulars.clone()

    def spec(self):
        """JSON-serialisable parameters; ``degradations.make(**op.spec())`` rebuilds the operator."""
        channels, height, width = self.input_shape
        return {"name": self.name, "channels": channels, "image_size": [height, width],
                **self._spec_params}

    def H(self, x):
        return self._H(self._check_image(x))

    def Ht(self, y):
        return self._Ht(self._check_measurement(y))

    def H_pinv(self, y):
        return self._H_pinv(self._check_measurement(y))

    def Vt(self, x):
        return self._Vt(self._check_image(x))

    def V(self, z):
        return self._V(self._check_vector(z, self.dim, "spectral vector"))

    def Ut(self, y):
        return self._Ut(self._check_measurement(y))

    def U(self, w):
        return self._U(self._check_vector(w, self.rank, "vector of kept coefficients"))

    def __repr__(self):
        return f"{type(self).__name__}({self.spec()})"

    def __matmul__(self, other):
        """self @ other: apply `other`, then this operator (a `degradations.compose` of the two)."""
        return compose(other, self)

    # ------------------------------------------------------------------ generic derived forms
    def _Ut(self, y):
        return y.reshape(y.shape[0], -1)

    def _U(self, w):
        return w.reshape(w.shape[0], *self.measurement_shape)

    def _H(self, x):
        return self._U(self._factor("singulars", x) * self._Vt(x)[:, :self.rank])

    def _Ht(self, y):
        return self._V(self._pad_null(self._factor("singulars", y) * self._Ut(y)))

    def _H_pinv(self, y):
        return self._V(self._pad_null(self._Ut(y) / self._factor("singulars", y)))

    def _pad_null(self, kept):
        """Append zeros for the null-space coefficients: (B, k) → (B, D)."""
        return torch.nn.functional.pad(kept, (0, self.dim - self.rank))

    # ------------------------------------------------------------------ factors
    def _register_factor(self, name, tensor):
        """Keep a small factor (CPU, float64) from which per-(dtype, device) copies are made."""
        self._cpu_factors[name] = tensor.to(torch.float64).cpu()

    def _factor(self, name, like):
        """The factor `name` in the dtype and on the device of tensor `like` (cached)."""
        key = (name, like.dtype, like.device)
        if key not in self._cached_factors:
            self._cached_factors[key] = self._cpu_factors[name].to(device=like.device, dtype=like.dtype)
        return self._cached_factors[key]

    def _register_index(self, name, tensor):
        """Keep an integer or bool tensor (CPU) from which per-device copies are made."""
        self._cpu_indices[name] = tensor.cpu()

    def _index(self, name, like):
        """The index tensor `name` on the device of tensor `like` (cached)."""
        key = (name, like.device)
        if key not in self._cached_factors:
            self._cached_factors[key] = self._cpu_indices[name].to(like.device)
        return self._cached_factors[key]

    # ------------------------------------------------------------------ validation
    def _check_image(self, x):
        expected = "(B, " + ", ".join(map(str, self.input_shape)) + ")"
        _check_tensor(x, "image batch")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} expects images of shape {expected}, got {tuple(x.shape)}; "
                             f"resize the image or build the operator for this size and channel count")
        return x

    def _check_measurement(self, y):
        expected = "(B, " + ", ".join(map(str, self.measurement_shape)) + ")"
        _check_tensor(y, "measurement")
        if tuple(y.shape[1:]) != self.measurement_shape:
            raise ValueError(f"{self.name} expects measurements of shape {expected}, got "
                             f"{tuple(y.shape)}; pass y as returned by op.H (with a batch dimension)")
        return y

    def _check_vector(self, v, length, what):
        _check_tensor(v, what)
        if v.ndim != 2 or v.shape[1] != length:
            raise ValueError(f"{self.name} expects a {what} of shape (B, {length}), got {tuple(v.shape)}")
        return v


class NaNInput(ValueError):
    """An operator was handed a tensor with NaN entries. A solver whose own inputs were finite turns it into
    `solvers.SolverDiverged`: the NaN came from its arithmetic, not from the pixels."""


def _check_tensor(t, what):
    if not torch.is_tensor(t):
        raise ValueError(f"the {what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"the {what} must be a floating-point tensor, got {t.dtype}; convert with .float()")
    if torch.isnan(t).any():
        raise NaNInput(f"the {what} contains NaN values; check the input for invalid pixels")


def check_image_size(image_size):
    """(H, W) as a tuple of two positive ints, or ValueError."""
    try:
        height, width = (int(n) for n in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(image_size):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    return height, width


def check_factor(factor, height, width):
    """A positive integer factor dividing both sides, or ValueError."""
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"the super-resolution factor must be a positive integer, got {factor!r}")
    if height % factor or width % factor:
        raise ValueError(f"the factor {factor} must divide the image size {height}x{width}; "
                         f"crop or pad the image to multiples of {factor}")
    return factor


def check_channels(channels):
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return channels


def orthogonal_completion(unit):
    """An orthogonal matrix whose first column is the unit vector `unit` (Householder reflection)."""
    n = unit.numel()
    first = torch.zeros(n, dtype=unit.dtype)
    first[0] = 1.0
    direction = first - unit
    if torch.linalg.vector_norm(direction) < 1e-12:
        return torch.eye(n, dtype=unit.dtype)
    direction = direction / torch.linalg.vector_norm(direction)
    return torch.eye(n, dtype=unit.dtype) - 2 * torch.outer(direction, direction)


def inverse_permutation(order):
    """The permutation p with p[order[i]] = i."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return inverse
