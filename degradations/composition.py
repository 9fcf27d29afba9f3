"""Composed degradations, e.g. blur then mask: H = H_n ⋯ H_2 H_1, with no SVD of the product.

`compose(first, second, …)` applies the operators in the order given; `second @ first` is the same
operator (matrix-product order). H and Hᵀ chain the parts; H⁺ is the least-squares solution of least
norm, by conjugate gradients on the normal equations HᵀH x = Hᵀy. The spectral protocol (V, Vt, U, Ut,
singulars) raises: solvers that need it (ddrm, ddnm) refuse such operators, pigdm and dps take them.
"""
import math

from .linalg import least_squares


class ComposedOperator:
    """The linear operator applying `parts` in order; name "a+b" for b ∘ a (see the module docstring)."""

    has_svd = False

    def __init__(self, parts, pinv_iterations=500):
        flat = []
        for part in parts:
            if not all(callable(getattr(part, method, None)) for method in ("H", "Ht", "spec")):
                raise ValueError(f"compose takes linear operators with H, Ht and spec(), got {type(part).__name__}")
            flat.extend(part.parts if isinstance(part, ComposedOperator) else [part])
        if len(flat) < 2:
            raise ValueError("compose needs at least two operators")
        for before, after in zip(flat, flat[1:]):
            if tuple(before.measurement_shape) != tuple(after.input_shape):
                raise ValueError(f"cannot apply {after.name} after {before.name}: {before.name} gives "
                                 f"{tuple(before.measurement_shape)}, {after.name} takes {tuple(after.input_shape)}")
        self.parts = flat
        self.input_shape = tuple(flat[0].input_shape)
        self.measurement_shape = tuple(flat[-1].measurement_shape)
        self.name = "+".join(part.name for part in flat)
        self.pinv_iterations = pinv_iterations

    @property
    def dim(self):
        return math.prod(self.input_shape)

    def H(self, x):
        for part in self.parts:
            x = part.H(x)
        return x

    def Ht(self, y):
        for part in reversed(self.parts):
            y = part.Ht(y)
        return y

    def H_pinv(self, y):
        return least_squares(self, y, self.pinv_iterations)

    def spec(self):
        """{"name": "a+b", "channels", "image_size", "parts": [a.spec(), b.spec()]}: make(**spec) rebuilds it."""
        channels, height, width = self.input_shape
        return {"name": self.name, "channels": channels, "image_size": [height, width],
                "parts": [part.spec() for part in self.parts]}

    def __matmul__(self, other):
        return compose(other, self)

    def __repr__(self):
        return f"ComposedOperator({self.spec()})"

    def _no_svd(self, *args):
        raise NotImplementedError(f"{self.name} is a composition of operators and has no SVD (it offers H, Ht "
                                  f"and H_pinv); use a solver that needs only those (pigdm, dps)")

    singulars = V = Vt = U = Ut = _no_svd


def compose(*operators, pinv_iterations=500):
    """The operator applying `operators` in the order given: compose(blur, mask) = mask ∘ blur."""
    return ComposedOperator(operators, pinv_iterations)
