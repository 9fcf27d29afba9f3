"""Pieces every sampler shares: timestep checks, ᾱ lookup, x̂₀ from ε, noise drawing, the model call, and
the divergence check (`SolverDiverged`, `divergence_checked`)."""
from __future__ import annotations

import functools
import inspect

import torch

from degradations.base import NaNInput

GENERIC_REMEDY = "try more (or fewer) steps, or float64"


def check_timesteps(timesteps, model) -> list[int]:
    """`timesteps` as a list of ints, strictly descending within the model's training range."""
    steps = [int(t) for t in (timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)]
    num_train = len(model.alphas_cumprod)
    if not steps:
        raise ValueError("timesteps is empty: give at least one timestep, e.g. solvers.ddrm_timesteps(20)")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {steps}")
    if steps[-1] < 0 or steps[0] >= num_train:
        raise ValueError(f"timesteps must lie in 0…{num_train - 1} (the model's training range), got {steps}")
    return steps


def with_next(steps: list[int]):
    """(t, t') pairs over the grid; the step after the last timestep goes to t' = −1, where ᾱ = 1."""
    return zip(steps, steps[1:] + [-1])


def alpha_bar(model, t: int, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t as a 0-d tensor with `like`'s dtype and device; ᾱ_{−1} = 1."""
    if t < 0:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return model.alphas_cumprod[t].to(like.device, like.dtype)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t (no clipping)."""
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def noise_drawer(noise=None, generator: torch.Generator | None = None):
    """draw(shape, like) → standard normal draws with `like`'s dtype and device, taken from the `noise`
    callable when given (e.g. torch.zeros for the mean path), else from `generator` (or torch's default)."""
    if noise is not None:
        def draw(shape, like):
            z = noise(tuple(shape))
            if tuple(z.shape) != tuple(shape):
                raise ValueError(f"noise({tuple(shape)}) returned shape {tuple(z.shape)}: it must return that shape")
            return z.to(like.device, like.dtype)
        return draw

    def draw(shape, like):
        return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)
    return draw


def call_model(model, x: torch.Tensor, t: int, cond=None):
    """One network call at timestep t → (ε̂, v), v the learned-variance channels or None.

    `cond` goes to the model untouched, and only when it is not None. A model with `learned_sigma` set
    returns 2C channels: ε̂ then v ∈ [−1, 1].
    """
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = model(x, t_batch) if cond is None else model(x, t_batch, cond)
    if getattr(model, "learned_sigma", False):
        eps, v = out.split(x.shape[1], dim=1)
        return eps, v
    return out, None


def denoise(model, x: torch.Tensor, t: int, cond, nfe: int, callback):
    """One model call at t → (ε̂, v, ᾱ_t, x̂₀), v the learned-variance channels or None; reports the call
    to `callback` as call number `nfe`. SolverDiverged when x_t or x̂₀ is not finite."""
    check_finite(x, nfe, t, "the state x_t")
    eps, v = call_model(model, x, t, cond)
    a = alpha_bar(model, t, x)
    x0 = predict_x0(x, eps, a)
    check_finite(x0, nfe, t, "x̂₀")
    report(callback, nfe, t, x, x0)
    return eps, v, a, x0


def ddim_step(x0, eps, a, a_next, eta: float, draw):
    """x_{t'} = √ᾱ' x̂₀ + √(1−ᾱ'−σ²) ε̂ + σ z with σ = η √((1−ᾱ')/(1−ᾱ)) √(1−ᾱ/ᾱ').

    Draws z only when σ can be nonzero (η > 0 and ᾱ' < 1), so η = 0 consumes no randomness.
    """
    sigma = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)).clamp_min(0).sqrt()
    x_next = a_next.sqrt() * x0 + (1 - a_next - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0 and a_next < 1:
        x_next = x_next + sigma * draw(x0.shape, x0)
    return x_next


def report(callback, nfe: int, t: int, x, x0, **extra) -> None:
    """callback({nfe, t, x, x0, …}) after a model call: x is the state the model saw at t, x0 its x̂₀."""
    if callback is not None:
        callback({"nfe": nfe, "t": t, "x": x, "x0": x0, **extra})


SVD_SOLVERS, GENERAL_SOLVERS = ("ddrm", "ddnm"), ("pigdm", "dps")


def has_svd(op) -> bool:
    """Whether `op` offers the spectral protocol (V, Vt, U, Ut, singulars); `op.has_svd` can say no."""
    return bool(getattr(op, "has_svd", callable(getattr(op, "singulars", None))))


def require_svd(op, solver: str) -> None:
    """ValueError, in one line, when `solver` (one that works in H's spectral space) gets an op without an SVD."""
    if not has_svd(op):
        name = getattr(op, "name", type(op).__name__)
        raise ValueError(f"{solver} needs an operator with an SVD ({' and '.join(SVD_SOLVERS)} do) and {name} has "
                         f"none: use {' or '.join(GENERAL_SOLVERS)}, which need only H and Ht")


class SolverDiverged(ValueError):
    """A solver's state or x̂₀ stopped being finite (inf or NaN): the run diverged, its input was fine.

    A ValueError as every bad choice of values (the fix is in the arguments: a step size, the number of
    steps, the dtype), so every front-end reports its one line. `call` counts model calls from 1, `t` is
    that call's timestep, `what` the tensor that was not finite, `step` a nested run's outer step (or None).
    """

    def __init__(self, call: int, t: int, what: str, solver: str = "the solver", remedy: str = GENERIC_REMEDY,
                 step: int | None = None):
        super().__init__(call, t, what, solver, remedy, step)
        self.call, self.t, self.what, self.solver, self.remedy, self.step = call, t, what, solver, remedy, step

    def __str__(self):
        where = f"t = {self.t}" if self.step is None else f"outer step {self.step}, t = {self.t}"
        return f"{self.solver} diverged at call {self.call} ({where}): {self.what} is not finite; {self.remedy}"

    def but(self, **changes) -> SolverDiverged:
        """The same divergence, some fields changed (a solver's name and remedy, a nested run's place)."""
        fields = dict(call=self.call, t=self.t, what=self.what, solver=self.solver, remedy=self.remedy, step=self.step)
        return SolverDiverged(**{**fields, **changes}).with_traceback(self.__traceback__)


def check_finite(tensor: torch.Tensor, call: int, t: int, what: str, **names) -> None:
    """SolverDiverged(call, t, what, **names) unless every entry of `tensor` is finite (one reduction)."""
    if not torch.isfinite(tensor).all():
        raise SolverDiverged(call, t, what, **names)


INPUTS = {"y": "the measurement y", "x_T": "the starting state x_T"}


def divergence_checked(remedy=None):
    """Decorator of a solver: SolverDiverged, named after the solver and with `remedy(arguments)` (None:
    GENERIC_REMEDY), when a state or x̂₀ is not finite after a model call (`denoise`), when the result after
    the last step is not, or when the solver hands an operator NaN (its inputs were finite, so the NaN is
    its own); inputs y and x_T that are not finite are a plain ValueError instead."""
    def decorate(solver):
        signature = inspect.signature(solver)

        @functools.wraps(solver)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            _check_inputs(arguments)
            try:
                return _finite_result(solver, arguments)
            except SolverDiverged as error:
                advice = (remedy(arguments) if remedy else None) or GENERIC_REMEDY
                raise error.but(solver=solver.__name__, remedy=advice) from None
        return checked
    return decorate


def _finite_result(solver, arguments):
    """solver(**arguments), with SolverDiverged (not yet named) for NaN it hands an operator and for a result
    that is not finite, both placed at its last reported call."""
    last = _LastCall(arguments["callback"])
    try:
        result = solver(**{**arguments, "callback": last})
    except NaNInput:
        raise SolverDiverged(last.nfe, last.t, "the tensor it handed the operator after that call") from None
    check_finite(result, last.nfe, last.t, "the result of its last step")
    return result


def _check_inputs(arguments) -> None:
    for name, what in INPUTS.items():
        value = arguments.get(name)
        if torch.is_tensor(value) and not torch.isfinite(value).all():
            raise ValueError(f"{what} contains NaN or infinite values; check the input for invalid pixels")


class _LastCall:
    """The callback a checked solver runs with: remembers the last call's number and t, passes info on."""

    def __init__(self, callback):
        self.callback, self.nfe, self.t = callback, 0, None

    def __call__(self, info) -> None:
        self.nfe, self.t = info["nfe"], info["t"]
        if self.callback is not None:
            self.callback(info)
