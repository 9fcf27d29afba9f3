"""Restoring a measurement with Nested Diffusion or a plain solver, as an anytime process.

Solvers: ddrm (the default, the paper's inner process), ddnm (DDNM / DDNM+), pigdm (ΠGDM) and dps
(DPS); ddrm and ddnm need an operator with an SVD, pigdm and dps take any linear operator (compositions
such as deblur_gauss+inp), and dps also the nonlinear saturating sensor.

`restore` is the library form of `ipsolve restore`: it calls `on_preview` with every anytime image the
moment it exists and `on_nfe(nfe)` after every network evaluation, so a caller can show progress, write
files, or stop early (an exception raised from a callback, or Ctrl-C, ends the run; the previews handed
out so far stay valid).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

import solvers
from ipsolve.config import SOLVER_OPTIONS, SOLVERS, restore_defaults
from ipsolve.models.unet import DDPMUNet


@dataclass(frozen=True)
class Preview:
    """An anytime image: x0 (B, C, H, W) in model space after `nfe` network evaluations in all. With
    samples=K, x0 holds the K draws of every measurement (B·K rows, measurement-major) and `estimate` their
    `solvers.estimates.PosteriorEstimate` (mean and per-pixel std, model space); else None."""

    x0: torch.Tensor
    nfe: int
    step: int  # 1-based count of previews so far
    estimate: object = None


def preview_marks(outer: int, inner: int, budget: int | None = None) -> list[int]:
    """NFE counts at which Nested Diffusion hands out an anytime image: after each inner run, as
    `solvers.inner_run_lengths` plans them (a `budget` is shared over the inner runs that fit it whole)."""
    check_schedule(outer, inner, budget)
    return list(itertools.accumulate(solvers.inner_run_lengths(outer, inner, budget)))


def check_schedule(outer: int, inner: int, budget: int | None = None) -> None:
    """ValueError unless outer ≥ 1, inner ≥ 1 and budget (if any) pays for at least one inner run and
    at most for all of them (a larger budget would silently be cut)."""
    if outer < 1:
        raise ValueError(f"outer steps must be at least 1, got {outer}")
    if inner < 1:
        raise ValueError(f"inner steps must be at least 1, got {inner}")
    if budget is not None and budget < inner:
        raise ValueError(f"budget of {budget} NFE is smaller than one inner run ({inner} NFE): "
                         f"raise the budget or lower the inner steps")
    if budget is not None and budget > outer * inner:
        raise ValueError(f"budget of {budget} NFE is more than {outer} outer x {inner} inner steps = "
                         f"{outer * inner} NFE can use: raise the outer or inner steps, or lower the budget")


SVD_SOLVERS = ("ddrm", "ddnm")


def solver_options(solver: str, **given) -> dict:
    """The options of `solver` among `given` (None = the solver's default); ValueError for an option the
    solver does not take, so that no argument is ever silently ignored."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    given = {key: value for key, value in given.items() if value is not None}
    unused = sorted(set(given) - set(SOLVER_OPTIONS[solver]))
    if unused:
        raise ValueError(f"{', '.join(unused)}: not an option of {solver} (it takes "
                         f"{', '.join(SOLVER_OPTIONS[solver])})")
    return given


def check_solver_takes(solver: str, op) -> None:
    """ValueError (one line) when `solver` needs an SVD that `op` does not have."""
    if solver in SVD_SOLVERS and not getattr(op, "has_svd", True):
        raise ValueError(f"{solver} needs an operator with an SVD, and {op.name} has none: use pigdm or dps")
    if solver != "dps" and not hasattr(op, "Ht"):
        raise ValueError(f"{op.name} is not linear: only dps takes it")


def check_plan(model, solver: str, outer: int, inner: int, budget: int | None = None,
               schedule: str | None = None) -> None:
    """ValueError (in the command line's words) when Nested Diffusion cannot plan these steps for `model`."""
    try:
        solvers.plan(model, solver, outer, inner, budget, schedule=schedule)
    except ValueError as error:
        raise ValueError(f"--outer {outer} with --inner {inner} cannot be planned ({error}): use more inner "
                         f"calls, fewer outer steps, or --schedule paper") from None


def restore(measurement, model, outer: int = 4, inner: int = 5, *, budget: int | None = None,
            solver: str = "ddrm", eta: float | None = None, eta_b: float | None = None,
            step_size: float | None = None, weight: str | None = None, batch: int = 1, vanilla: bool = False,
            schedule: str | None = None, generator: torch.Generator | None = None, on_preview=None,
            on_nfe=None, clip_x0: bool | None = None, step_schedule: str | None = None,
            samples: int = 1) -> list[Preview]:
    """Restore `measurement` (with .y, .op, .sigma_y in model units) with `model`; return the previews.

    Nested Diffusion runs `outer` steps of `inner` calls of `solver` each (at most `budget` NFE, shared
    over the inner runs that fit it whole: `preview_marks`); `vanilla` runs the plain solver with as many
    calls and hands out its x̂₀ predictions at the same NFE marks, so the two anytime strips compare.
    eta / eta_b / step_size / clip_x0 / step_schedule / weight go to the solvers that take them (None: the
    solver's default for this task, `ipsolve.config.restore_defaults`; given to one that does not: an
    error). `batch` draws that many samples for the one measurement. The last preview is the result.
    `samples` = K > 1 draws K posterior samples of every row in one batch (`solvers.nested(samples=K)`, or
    the plain solver on `solvers.estimates.repeat_for_samples`): every preview then carries their mean and
    std (`Preview.estimate`).
    `schedule` ("matched", the default for restorers, or "paper") is solvers.nested's.
    Runs on the device of measurement.y (put the model there too).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    op = measurement.op
    y = measurement.y.reshape(-1, *op.measurement_shape)[:1].repeat(batch, *([1] * len(op.measurement_shape)))
    return restore_batch(y, op, measurement.sigma_y, model, outer, inner, budget=budget, solver=solver, eta=eta,
                         eta_b=eta_b, step_size=step_size, weight=weight, vanilla=vanilla, schedule=schedule,
                         generator=generator, on_preview=on_preview, on_nfe=on_nfe, clip_x0=clip_x0,
                         step_schedule=step_schedule, samples=samples)


def restore_batch(y, op, sigma_y: float, model, outer: int = 4, inner: int = 5, *, budget: int | None = None,
                  solver: str = "ddrm", eta: float | None = None, eta_b: float | None = None,
                  step_size: float | None = None, weight: str | None = None, vanilla: bool = False,
                  schedule: str | None = None, generator: torch.Generator | None = None, noise=None,
                  on_preview=None, on_nfe=None, clip_x0: bool | None = None,
                  step_schedule: str | None = None, samples: int = 1) -> list[Preview]:
    """`restore` for a batch of measurements y (B, *op.measurement_shape) of one operator and noise level;
    random draws from `noise` (a callable, e.g. one generator per row) or else `generator`; `samples` K > 1:
    K draws of each measurement in one batch (B·K rows), every preview with their `estimate`."""
    from solvers.estimates import check_samples, estimate, repeat_for_samples, split_samples

    check_samples(samples)
    marks = preview_marks(outer, inner, budget)
    options = solver_options(solver, eta=eta, eta_b=eta_b, step_size=step_size, weight=weight, clip_x0=clip_x0,
                             step_schedule=step_schedule)
    options = restore_defaults(solver, op.name, options)
    check_solver_takes(solver, op)
    sigma_y = float(sigma_y)
    measured = {"y": y, "forward": op} if solver == "dps" else {"y": y, "op": op, "sigma_y": sigma_y}
    draws = {"noise": noise} if noise is not None else {"generator": generator}
    previews = []

    def hand_out(x0, nfe, estimated=None):
        if samples > 1 and estimated is None:
            estimated = estimate(split_samples(x0.detach(), samples))
        previews.append(Preview(x0.detach(), nfe, len(previews) + 1, estimated))
        if on_preview is not None:
            on_preview(previews[-1])

    def after_call(info):
        if on_nfe is not None:
            on_nfe(info["nfe"])
        if vanilla and info["nfe"] in marks[:-1]:
            hand_out(info["x0"], info["nfe"])

    with torch.no_grad():
        if vanilla and samples > 1:
            measured["y"] = repeat_for_samples(y, samples)
        if vanilla:  # the x̂₀ predictions at the marks, then the solver's own result (for ddrm the same)
            timesteps = solvers.plain_ddrm_timesteps(marks[-1], len(model.alphas_cumprod))
            result = getattr(solvers, solver)(model, timesteps=timesteps, callback=after_call, **draws,
                                              **measured, **options)
            hand_out(result, marks[-1])
        else:
            run = solvers.nested(model, inner=solver, outer_steps=outer, inner_steps=inner, budget=budget,
                                 schedule=schedule, callback=after_call, samples=samples if samples > 1 else None,
                                 **draws, **measured, **options)
            for preview in run:
                hand_out(preview.x0, preview.nfe, preview.estimate)
    return previews


def check_model_fits(model, image_shape, device="cpu") -> None:
    """ValueError (one line) unless `model` (on `device`) can denoise images of `image_shape` (C, H, W)."""
    channels, height, width = image_shape
    trained = getattr(model, "image_shape", None)
    if trained is None:
        return
    if trained[0] != channels:
        raise ValueError(f"the model takes {trained[0]}-channel images but the measurement is of a "
                         f"{channels}-channel image: degrade a {trained[0]}-channel image or use another model")
    if tuple(trained[1:]) == (height, width):
        return
    multiple = _size_multiple(model)
    if multiple is not None and (height % multiple or width % multiple):
        raise ValueError(f"the model takes images whose height and width are multiples of {multiple} (trained "
                         f"at {trained[1]}x{trained[2]}), not {height}x{width}: degrade a resized image (--size)")
    if multiple is None:
        _probe(model, image_shape, device)


def _size_multiple(model) -> int | None:
    """2^(levels−1) for a model built on DDPMUNet (its resolution halves level by level), else None."""
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    for module in modules:
        if isinstance(module, DDPMUNet):
            return 2 ** (len(module.down) - 1)
    return None


def _probe(model, image_shape, device) -> None:
    """One network call at the new size: a model that cannot take it fails here, with a clear line."""
    x = torch.zeros(1, *image_shape, device=device)
    try:
        with torch.no_grad():
            model(x, torch.zeros(1, dtype=torch.long, device=device))
    except (RuntimeError, ValueError):
        _, height, width = image_shape
        trained = model.image_shape
        raise ValueError(f"the model (trained at {trained[1]}x{trained[2]}) cannot take "
                         f"{height}x{width} images: degrade a resized image (--size)") from None
