"""Nested Diffusion (Elata et al.): a complete inner sampler inside every step of an outer DDIM process.

At outer time t the inner sampler (DDRM for inverse problems — Algorithm 3 —, DDIM, DDPM or DPM-Solver++
for generation — Algorithm 2 —) runs from the outer state x_t itself down to t' = −1; its result x̂₀ is
the anytime image, and the outer step is DDIM from (x_t, x̂₀):
ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t), x_next = √ᾱ_n x̂₀ + √(1−ᾱ_n−σ²) ε̂ + σ z (η_o = 0 by default).

Schedules (where the outer times and inner grids lie; docs/anytime_schedule.md has the measurements):
* "matched" (the default for inverse problems, i.e. inner samplers that take y): inner run j, of k_j calls,
  runs on the last k_j points of plain DDRM's grid for K_j = k_1 + … + k_j calls — the calls made by the
  end of that run (`matched_inner_timesteps`) —, started from the outer state instead of plain DDRM's own.
  The first run *is* plain DDRM with k_1 calls (same grid, same draws), and every later preview steps
  exactly as plain DDRM with as many calls does near t = 0, so stopping early costs nothing measurable.
* "paper" (the default for generation; the released code): outer times evenly spaced from a top time
  down, 0 excluded (`outer_timesteps`), the top T − 1 for generation and, for DDRM, the top of vanilla
  DDRM's grid for the total, `ddrm_timesteps(total)[0]`; inner grids `inner_timesteps` (evenly spaced on
  [0, t], both ends) for DDRM / DDIM / DDPM, `dpm_inner_timesteps` for DPM-Solver++ (the released code's).
Either way S = 1 is the plain inner sampler. A `budget` is planned, not truncated: the runs that fit it
whole are kept and the budget is shared over them (`planned_inner_counts`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import SolverDiverged, alpha_bar, check_finite, check_timesteps, ddim_step, noise_drawer, require_svd
from .ddim import ddim
from .ddnm import ddnm
from .ddpm import ddpm
from .ddrm import ddrm, ddrm_init
from .dpm_solver import dpm_solver
from .dps import dps
from .estimates import PosteriorEstimate, check_samples, check_start, estimate, repeat_for_samples, split_samples
from .pigdm import DEFAULT_START, pigdm, pigdm_start
from .timesteps import (ddrm_timesteps, dpm_inner_timesteps, inner_step_counts, inner_timesteps,
                        matched_inner_timesteps, outer_timesteps, plain_ddrm_timesteps, planned_inner_counts)

INNER_SAMPLERS = {"ddrm": ddrm, "ddnm": ddnm, "pigdm": pigdm, "dps": dps, "ddim": ddim, "ddpm": ddpm,
                  "dpm_solver": dpm_solver}
INNER_OPTIONS = {"ddrm": {"y", "op", "sigma_y", "eta", "eta_b"}, "ddnm": {"y", "op", "sigma_y", "eta"},
                 "pigdm": {"y", "op", "sigma_y", "eta", "cg_iterations", "weight", "safeguard", "start",
                           "clip_x0", "r2", "guidance_scale"},
                 "dps": {"y", "forward", "step_size", "clip_x0", "step_schedule"},
                 "ddim": {"eta"}, "ddpm": {"variance"},
                 "dpm_solver": {"order", "variant"}}
# restorers: the measurement options each needs; they are called by keyword
REQUIRED_OPTIONS = {"ddrm": ("y", "op", "sigma_y"), "ddnm": ("y", "op", "sigma_y"), "pigdm": ("y", "op", "sigma_y"),
                    "dps": ("y", "forward")}
DEFAULT_INNER_GRIDS = {"ddrm": inner_timesteps, "ddnm": inner_timesteps, "pigdm": inner_timesteps,
                       "dps": inner_timesteps, "ddim": inner_timesteps, "ddpm": inner_timesteps,
                       "dpm_solver": dpm_inner_timesteps}
# The grid of a plain run of n calls, which the "matched" schedule matches (default: DDRM's, for every inner
# sampler that restores from y); the generation samplers' plain grids are the released code's.
PLAIN_GRIDS = {"ddim": lambda n, num_train: inner_timesteps(num_train - 1, n),
               "ddpm": lambda n, num_train: inner_timesteps(num_train - 1, n),
               "dpm_solver": lambda n, num_train: dpm_inner_timesteps(num_train - 1, n)}
SCHEDULES = ("matched", "paper")
MATCHED_REACH = 1.0  # < 1 starts later runs lower: better on average, worse at some budgets (docs/anytime_schedule.md)


@dataclass(frozen=True)
class Preview:
    """The anytime answer after an inner run: x0 (model space, unclipped) after `nfe` model calls in all,
    at outer step `step` (1…S) whose time is t; x is the outer state the inner run started from.
    With nested(..., samples=K), `estimate` is the posterior mean and std of x0's K draws per measurement."""

    x0: torch.Tensor
    nfe: int
    step: int
    t: int
    x: torch.Tensor
    estimate: PosteriorEstimate | None = None


def nested(model, inner: str = "ddrm", outer_steps: int | None = None, inner_steps=None, x_T=None, shape=None,
           budget: int | None = None, eta_outer: float = 0.0, generator=None, noise=None, cond=None, hook=None,
           *, schedule: str | None = None, outer_timesteps: list[int] | None = None, inner_schedule: str = "uniform",
           inner_grid=None, callback=None, dtype=None, device=None, samples: int | None = None,
           **inner_kwargs) -> NestedRun:
    """Nested Diffusion as an iterator of `Preview`s, one per outer step; see `NestedRun`.

    inner: "ddrm" (needs y, op, sigma_y; optional eta, eta_b), "ddnm" (y, op, sigma_y; eta), "pigdm"
    (y, op, sigma_y; eta, cg_iterations, weight, safeguard, start, clip_x0, r2, guidance_scale), "dps" (y,
    forward; step_size, clip_x0, step_schedule), "ddim" (eta), "ddpm" (variance) or "dpm_solver" (order,
    variant) — those options go in **inner_kwargs. ddrm and ddnm need an operator with an SVD; pigdm takes any
    linear operator with H and Ht, dps any differentiable forward.
    outer_steps: S; or outer_timesteps: the descending outer grid itself (overrides the schedule's).
    inner_steps: calls per inner run, one int or a list of S ints; with one int I, inner_schedule
    ("uniform", "front", "back") shares the S·I calls out over the outer steps (`inner_step_counts`).
    schedule: "matched" or "paper" (module doc); None → "matched" for inner samplers that take y, else "paper".
    inner_grid: callable(t, count) → the inner timesteps (default: the schedule's, see the module doc).
    x_T: the first outer state; None → DDRM's y-aware initialisation at the top time for "ddrm" (so
    S = 1 equals plain DDRM with the same draws), ΠGDM's `start` for "pigdm", standard normal noise shaped
    as the operator's images (y's dtype/device) for ddnm and dps (their plain start), else standard normal
    noise of `shape` (dtype/device). Every inner run starts from the outer state itself, never re-initialised.
    budget: cap on the total number of model calls, planned from the start (`planned_inner_counts`: the
    inner runs that fit whole are kept and lengthened to share the whole budget; none is cut short).
    eta_outer: η of the outer DDIM step. Random draws come from `noise` or `generator`, as in the samplers.
    cond: passed to the model untouched (when not None); `run.set_cond` changes it for later inner runs.
    hook(preview, run): called after every inner run, before the preview is yielded.
    callback(info): after every model call; info as the samplers', nfe counted over the whole run, plus step.
    samples: K draws per measurement in one batch, for restorers (inner samplers that take y): y is repeated
    measurement-major (`repeat_for_samples`, B → B·K rows; an x_T or a batched cond must have those B·K rows)
    and every Preview carries the `estimate` (posterior mean and std) of its x0 split by K.
    """
    if inner not in INNER_SAMPLERS:
        raise ValueError(f"inner sampler {inner!r} is not one of {', '.join(INNER_SAMPLERS)}")
    unknown = set(inner_kwargs) - INNER_OPTIONS[inner]
    if unknown:
        raise ValueError(f"{', '.join(sorted(unknown))}: not an option of the {inner} inner sampler "
                         f"(it takes {', '.join(sorted(INNER_OPTIONS[inner]))})")
    missing = [name for name in REQUIRED_OPTIONS.get(inner, ()) if name not in inner_kwargs]
    if missing:
        raise ValueError(f"nested {inner} needs {', '.join(f'{name}=' for name in REQUIRED_OPTIONS[inner])} "
                         f"(missing {', '.join(missing)})")
    if inner in ("ddrm", "ddnm"):
        require_svd(inner_kwargs["op"], inner)
    if eta_outer < 0:
        raise ValueError(f"eta_outer must be non-negative, got {eta_outer}")
    if samples is not None:
        check_samples(samples)
        if "y" not in INNER_OPTIONS[inner]:
            raise ValueError(f"samples= draws per measurement y; the {inner} inner sampler takes none")
        inner_kwargs["y"] = repeat_for_samples(inner_kwargs["y"], samples)
        check_start(x_T, inner_kwargs["y"].shape[0], samples)
    schedule = _schedule(inner, schedule)
    outer_grid, inner_grids = _plan(model, inner, outer_steps, inner_steps, outer_timesteps, inner_schedule,
                                    inner_grid, budget, schedule)
    if x_T is None and inner == "ddrm":
        x_T = ddrm_init(model, inner_kwargs["y"], inner_kwargs["op"], inner_kwargs["sigma_y"], outer_grid[0],
                        noise=noise, generator=generator)
    elif x_T is None and inner == "pigdm":  # its `start`, as when run alone
        x_T = pigdm_start(model, inner_kwargs["y"], inner_kwargs["op"], outer_grid[0],
                          inner_kwargs.get("start", DEFAULT_START), noise_drawer(noise, generator),
                          inner_kwargs.get("cg_iterations", 100))
    elif x_T is None and inner in REQUIRED_OPTIONS:  # ddnm, dps: pure noise, as when run alone
        y, op = inner_kwargs["y"], inner_kwargs.get("op", inner_kwargs.get("forward"))
        if shape is None and not hasattr(op, "input_shape"):
            raise ValueError(f"nested {inner} needs x_T or shape= when its forward does not say its input_shape")
        x_T = noise_drawer(noise, generator)(tuple(shape or (y.shape[0], *op.input_shape)), y)
    elif x_T is None:
        if shape is None:
            raise ValueError(f"nested {inner} needs x_T or shape= (the batch shape to start from noise)")
        like = torch.empty((), dtype=dtype or torch.get_default_dtype(), device=device)
        x_T = noise_drawer(noise, generator)(tuple(shape), like)
    return NestedRun(model, inner, outer_grid, inner_grids, x_T, eta_outer, noise, generator, cond, hook, callback,
                     inner_kwargs, samples)


class NestedRun:
    """Iterating yields a `Preview` after each inner run; `latest` holds the last one (the anytime answer).

    Breaking out of the loop stops early (iterating again resumes). Between outer steps — from a hook or
    the loop body — `keep(indices)` and `set_cond(cond)` steer the following steps. The plan is fixed at
    construction: `outer_timesteps` (one int per outer step that runs) and `inner_timesteps` (their grids);
    `total_nfe` is the number of model calls of the whole run, `nfe` the number made so far; `samples` is K
    (draws per measurement) or None.
    """

    def __init__(self, model, inner, outer_timesteps, inner_timesteps, x_T, eta_outer, noise, generator, cond, hook,
                 callback, inner_kwargs, samples=None):
        self.model, self.inner, self.eta_outer, self.hook, self.callback = model, inner, eta_outer, hook, callback
        self.samples = samples
        self.outer_timesteps, self.inner_timesteps = outer_timesteps, inner_timesteps
        self.inner_kwargs, self.noise, self.generator = inner_kwargs, noise, generator
        self.total_nfe = sum(len(grid) for grid in inner_timesteps)
        self._draw = noise_drawer(noise, generator)
        self._x, self._x0, self._cond, self.nfe, self.latest = x_T, None, cond, 0, None
        self._previews = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> Preview:
        return next(self._previews)

    def keep(self, indices) -> None:
        """Keep the chosen candidates (batch indices), replicated cyclically over the batch; y (DDRM) and a
        tensor `cond` with the batch's leading size are replicated alike. Applies to the next outer step."""
        if self._x0 is None:
            raise ValueError("keep() chooses among previews: call it after the first outer step")
        if self.samples is not None:
            raise ValueError("keep() would duplicate draws of a samples= run and shrink its std: not allowed")
        batch = self._x.shape[0]
        indices = [int(i) for i in ([indices] if isinstance(indices, int) else indices)]
        if not indices or not all(0 <= i < batch for i in indices):
            raise ValueError(f"keep({indices}): give candidate indices among 0…{batch - 1}")
        rows = torch.tensor([indices[i % len(indices)] for i in range(batch)], device=self._x.device)
        self._x, self._x0 = self._x[rows], self._x0[rows]
        if "y" in self.inner_kwargs and self.inner_kwargs["y"].shape[0] == batch:
            self.inner_kwargs["y"] = self.inner_kwargs["y"][rows.to(self.inner_kwargs["y"].device)]
        if torch.is_tensor(self._cond) and self._cond.shape[0] == batch:
            self._cond = self._cond[rows.to(self._cond.device)]

    def set_cond(self, cond) -> None:
        """Condition the following inner runs on `cond` (e.g. a new prompt embedding or class)."""
        self._cond = cond

    def _run(self):
        steps = len(self.outer_timesteps)
        for step, (t, grid) in enumerate(zip(self.outer_timesteps, self.inner_timesteps), start=1):
            self._x0 = self._inner_run(grid, step)
            self.nfe += len(grid)
            self.latest = Preview(self._x0, self.nfe, step, t, self._x, self._estimate())
            if self.hook is not None:
                self.hook(self.latest, self)
            yield self.latest
            if step < steps:
                self._x = self._outer_step(t, self.outer_timesteps[step], step)

    def _estimate(self):
        return None if self.samples is None else estimate(split_samples(self._x0, self.samples))

    def _inner_run(self, grid, step):
        offset = self.nfe
        callback = None if self.callback is None else (
            lambda info: self.callback({**info, "nfe": offset + info["nfe"], "step": step}))
        common = dict(noise=self.noise, generator=self.generator, callback=callback, cond=self._cond)
        sampler = INNER_SAMPLERS[self.inner]
        try:
            if self.inner in REQUIRED_OPTIONS:
                return sampler(self.model, timesteps=grid, x_T=self._x, **common, **self.inner_kwargs)
            return sampler(self.model, self._x, grid, **common, **self.inner_kwargs)
        except SolverDiverged as error:  # counted over the whole run, at its outer step
            raise error.but(solver=f"nested {self.inner}", call=offset + error.call, step=step) from None

    def _outer_step(self, t, t_next, step):
        a, a_next = alpha_bar(self.model, t, self._x), alpha_bar(self.model, t_next, self._x)
        eps = (self._x - a.sqrt() * self._x0) / (1 - a).sqrt()
        x = ddim_step(self._x0, eps, a, a_next, self.eta_outer, self._draw)
        check_finite(x, self.nfe, t, f"the outer step's state at t = {t_next}", solver=f"nested {self.inner}",
                     step=step)
        return x


def _plan(model, inner, outer_steps, inner_steps, outer_grid, inner_schedule, inner_grid, budget,
          schedule="paper"):
    """(outer times, inner grids) of the steps that run, planned for `budget` (see `planned_inner_counts`)."""
    num_train = len(model.alphas_cumprod)
    if outer_grid is not None:
        outer_grid = check_timesteps(outer_grid, model)
        if outer_steps not in (None, len(outer_grid)):
            raise ValueError(f"outer_steps={outer_steps} but outer_timesteps has {len(outer_grid)} times")
        outer_steps = len(outer_grid)
    if outer_steps is None or inner_steps is None:
        raise ValueError("nested needs outer_steps (or outer_timesteps) and inner_steps")
    counts = inner_run_lengths(outer_steps, inner_steps, budget, inner_schedule)
    grid_of = inner_grid or DEFAULT_INNER_GRIDS[inner]
    if outer_grid is not None:
        outer_grid = outer_grid[:len(counts)]
    elif schedule == "matched":
        matched = matched_inner_timesteps(counts, PLAIN_GRIDS.get(inner, plain_ddrm_timesteps), MATCHED_REACH,
                                          num_train)
        outer_grid = [grid[0] for grid in matched]
        if inner_grid is None:
            return outer_grid, [check_timesteps(grid, model) for grid in matched]
    else:
        total = sum(counts)
        top = ddrm_timesteps(min(total, num_train), num_train)[0] if inner == "ddrm" else num_train - 1
        outer_grid = outer_timesteps(len(counts), top)
    grids = [check_timesteps(grid_of(t, count), model) for t, count in zip(outer_grid, counts)]
    for t, count, grid in zip(outer_grid, counts, grids):
        if len(grid) != count or grid[0] != t:
            raise ValueError(f"inner grid at outer time {t} must start at {t} with {count} points, got {grid}")
    return outer_grid, grids


def plan(model, inner: str = "ddrm", outer_steps: int | None = None, inner_steps=None, budget: int | None = None,
         schedule: str | None = None, inner_schedule: str = "uniform") -> tuple[list[int], list[list[int]]]:
    """(outer times, inner grids) that `nested` would run with these arguments, without running anything
    (ValueError when they cannot be planned): a caller can check a request before it writes anything."""
    if inner not in INNER_SAMPLERS:
        raise ValueError(f"inner sampler {inner!r} is not one of {', '.join(INNER_SAMPLERS)}")
    schedule = _schedule(inner, schedule)
    return _plan(model, inner, outer_steps, inner_steps, None, inner_schedule, None, budget, schedule)


def _schedule(inner, schedule):
    """`schedule` checked, or by default "matched" for inner samplers that take y, else "paper"."""
    if schedule is None:
        return "matched" if "y" in INNER_OPTIONS[inner] else "paper"
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    return schedule


def inner_run_lengths(outer_steps: int, inner_steps, budget: int | None = None,
                      inner_schedule: str = "uniform") -> list[int]:
    """The model calls of each inner run that nested will make: `inner_steps` (one int shared out by
    `inner_schedule`, or a list) over `outer_steps`, planned for `budget` (`planned_inner_counts`).
    Their running sums are the NFEs at which the previews come (restore announces these marks)."""
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be at least 1 model call, got {budget}")
    return planned_inner_counts(_inner_counts(inner_steps, outer_steps, inner_schedule), budget)


def _inner_counts(inner_steps, outer_steps, schedule):
    if isinstance(inner_steps, int):
        return inner_step_counts(inner_steps * outer_steps, outer_steps, schedule)
    counts = [int(c) for c in inner_steps]
    if schedule != "uniform":
        raise ValueError("inner_schedule applies to one inner_steps number; a list already fixes every run")
    if len(counts) != outer_steps or min(counts) < 1:
        raise ValueError(f"inner_steps {counts} must give one count ≥ 1 for each of the {outer_steps} outer steps")
    return counts
