"""ipsolve vs DeepInverse side by side: DDRM, ΠGDM and DPS of both libraries, deepinv's DiffPIR and ipsolve's
nested DDRM, on the embedded MNIST DDPM, in one process.

Both libraries run the same network (`load_model("embedded")`; deepinv's through
`ipsolve.interop.deepinv.as_denoiser`, its SVD operators through `to_deepinv`) on the same held-out digits,
the same measurements (one noise draw per task, `bench_solvers.measure`) and the same number of network calls,
counted by a hook on the network itself (every forward pass of the network, whichever library asked for it).
Tasks: the operators of ipsolve's packaged tasks (deno, sr4, inp) with the embedded model's noise levels
(`eval_embedded.TASKS`). deepinv works on [0, 1] images: it gets y_pixel = (y + H 1)/2 and σ_y/2.

Hyper-parameters that are tuned (DPS step sizes of both, deepinv's ΠGDM weight and DiffPIR λ, ζ) are chosen on
validation digits (the last --val-images of mnist32("test"), disjoint from the test digits, which are the
first --images), per task and budget, by mean PSNR; the test digits are then run once per row, the rows of
the two libraries alternating so that the machine's noise is shared. CPU time: process time of each run,
one thread.

Rows (ROWS): each library's DDRM at its defaults; ipsolve's DDRM with `noise_scale=1/√2` (deepinv's draws) on its
own grid and on deepinv's; deepinv's DDRM on ipsolve's grid; ipsolve's nested DDRM; ΠGDM and DPS of both, at
defaults and tuned; ipsolve's ΠGDM with x̂₀ clamped (`clip_x0`, deepinv's clip), tuned; ipsolve's ΠGDM with
deepinv's step (clamp, r², weight λ: `r2="deepinv"`, `guidance_scale`), λ tuned; deepinv's DiffPIR, tuned.
--methods runs only some of them. PAIRS lists the per-digit differences reported. docs/vs_deepinv.md holds the
last run and, below its READING_MARKER, the reading of each gap (kept across runs).

Usage: python scripts/bench_vs_deepinv.py [--images 64] [--val-images 8] [--budgets 20 100] [--tasks ...]
       [--methods NAME ...] [--quick] [--out docs/vs_deepinv.md]
(64 digits take over an hour on 2 shared cores; --images 32 about 40 minutes; --quick a minute per task.)
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import deepinv as dinv
import numpy as np
import torch

import degradations
import solvers
from bench_solvers import READING_MARKER, kept_reading, measure
from eval_embedded import TASKS as SIGMA_Y
from ipsolve.config import load_task, restore_defaults
from ipsolve.datasets import mnist32
from ipsolve.imageio import from_model, to_model
from ipsolve.interop.deepinv import as_denoiser, grid_sigmas, nearest_timesteps, to_deepinv
from ipsolve.metrics import psnr
from ipsolve.models import load_model
from solvers.ddrm import NOISE_SCALE_DEEPINV

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (20, 100)
NESTED_OUTER = 4  # nested DDRM: 4 outer steps sharing the budget (`ipsolve restore`'s 4 × 5 at 20 calls)
SEED = 0  # measurement noise (and operator) seed; samplers use SEED + 1


class NetworkCalls:
    """Counts forward passes of the model's network (a pre-forward hook), whoever calls it."""

    def __init__(self, model):
        self.count = 0
        model.net.register_forward_pre_hook(self._called)

    def _called(self, module, inputs):
        self.count += 1


@dataclass(frozen=True)
class Network:
    """The model, the same model as a deepinv denoiser, and the counter of its network's calls."""
    model: object
    denoiser: object
    calls: NetworkCalls

    @classmethod
    def embedded(cls):
        model = load_model("embedded")
        return cls(model, as_denoiser(model), NetworkCalls(model))


@dataclass
class Problem:
    """One task on a set of digits: the measurement in ipsolve's units and in deepinv's ([0, 1] images)."""
    network: Network
    task: str
    clean: torch.Tensor  # model units
    op: object
    sigma_y: float
    y: torch.Tensor
    physics: object
    y_pixel: torch.Tensor

    @property
    def model(self):
        return self.network.model

    @property
    def denoiser(self):
        return self.network.denoiser


@dataclass
class Row:
    """A method of one library: run(problem, calls, **params) → [0, 1] images; `grid` tuned on validation."""
    name: str
    library: str
    run: object
    grid: list = field(default_factory=list)  # option dicts tried on validation digits
    default: tuple | None = None  # (row name, callable(task) → options): when tuning picks those, that row's run


def deepinv_grid(model, n):
    """deepinv's default DDRM grid σ = linspace(1, 0, n) ([0, 1] units) as the timesteps `as_denoiser` runs
    the model at (396, 385, …, 28, 0 for 20 calls)."""
    sigmas = torch.from_numpy(np.linspace(1, 0, n))
    return nearest_timesteps(model.alphas_cumprod, 1 / (1 + 4 * sigmas**2)).tolist()


def ipsolve_ddrm(p, n, noise_scale=1.0, grid="ipsolve"):
    """ipsolve's DDRM (η = 0.85, η_b = 1) on its grid for n calls, or on deepinv's (grid="deepinv")."""
    timesteps = solvers.plain_ddrm_timesteps(n) if grid == "ipsolve" else deepinv_grid(p.model, n)
    return from_model(solvers.ddrm(p.model, p.y, p.op, p.sigma_y, timesteps, noise_scale=noise_scale,
                                   generator=torch.Generator().manual_seed(SEED + 1)))


def ipsolve_nested_ddrm(p, n):
    run = solvers.nested(p.model, "ddrm", outer_steps=NESTED_OUTER, inner_steps=n // NESTED_OUTER, y=p.y, op=p.op,
                         sigma_y=p.sigma_y, generator=torch.Generator().manual_seed(SEED + 1))
    return from_model(list(run)[-1].x0)


def ipsolve_pigdm(p, n, **options):
    return from_model(solvers.pigdm(p.model, p.y, p.op, p.sigma_y, solvers.plain_ddrm_timesteps(n),
                                    generator=torch.Generator().manual_seed(SEED + 1), **options))


def ipsolve_dps(p, n, **options):
    options = {**restore_defaults("dps", p.op.name), **options}
    return from_model(solvers.dps(p.model, p.y, p.op, solvers.plain_ddrm_timesteps(n),
                                  generator=torch.Generator().manual_seed(SEED + 1), **options))


def deepinv_ddrm(p, n, grid="deepinv"):
    """deepinv's DDRM; grid "deepinv": its default σ = linspace(1, 0, n) ([0, 1] units), "ipsolve": the σ_t/2
    of ipsolve's grid for n calls."""
    if grid == "deepinv":
        sigmas = np.linspace(1, 0, n)
    else:
        sigmas = grid_sigmas(p.model.alphas_cumprod)[solvers.plain_ddrm_timesteps(n)].numpy()
    torch.manual_seed(SEED + 1)  # deepinv's DDRM draws from the global generator
    return dinv.sampling.DDRM(p.denoiser, sigmas=sigmas, eta=0.85, etab=1.0)(p.y_pixel, p.physics)


def deepinv_posterior(p, n, fidelity, solver):
    """deepinv's PosteriorDiffusion on its VP SDE with `fidelity`, `solver` on n + 1 times from 1 to 0 (the
    last time is not evaluated: n calls), x̂ denoised at the end as deepinv does."""
    sampler = dinv.sampling.PosteriorDiffusion(data_fidelity=fidelity, denoiser=p.denoiser,
                                               sde=dinv.sampling.VariancePreservingDiffusion(), solver=solver)
    return sampler(p.y_pixel, p.physics, seed=SEED + 1)


def deepinv_dps(p, n, weight):
    sampler = dinv.sampling.DPS(p.denoiser, num_steps=n + 1, weight=weight, rng=torch.Generator())
    return sampler(p.y_pixel, p.physics, seed=SEED + 1)


def deepinv_pigdm(p, n, weight, clip):
    """deepinv's ΠGDM data fidelity (clip: x̂₀ clamped to [0, 1] inside it; deepinv's default is no clamp) on
    DDIM with η = 1 (ipsolve's ΠGDM default)."""
    solver = dinv.sampling.DDIMSolver(timesteps=torch.linspace(1, 0, n + 1, dtype=torch.float64), eta=1.0,
                                      rng=torch.Generator())
    return deepinv_posterior(p, n, dinv.sampling.PiGDMDataFidelity(weight=weight, clip=(0, 1) if clip else None), solver)


def deepinv_diffpir(p, n, lambda_, zeta):
    sampler = dinv.sampling.DiffPIR(p.denoiser, dinv.optim.data_fidelity.L2(), sigma=p.sigma_y / 2, max_iter=n,
                                    zeta=zeta, lambda_=lambda_)
    torch.manual_seed(SEED + 1)
    return sampler(p.y_pixel, p.physics)


# Test order: the libraries alternate, each ipsolve row next to its deepinv counterpart. A grid is the list of
# options tried on the validation digits.
ROWS = [
    Row("DDRM", "ipsolve", ipsolve_ddrm),
    Row("DDRM", "deepinv", deepinv_ddrm),
    Row("DDRM noise ×1/√2", "ipsolve", lambda p, n: ipsolve_ddrm(p, n, NOISE_SCALE_DEEPINV)),
    Row("DDRM, ipsolve's grid", "deepinv", lambda p, n: deepinv_ddrm(p, n, grid="ipsolve")),
    Row("DDRM noise ×1/√2, deepinv's grid", "ipsolve",
        lambda p, n: ipsolve_ddrm(p, n, NOISE_SCALE_DEEPINV, grid="deepinv")),
    Row("DiffPIR tuned", "deepinv", deepinv_diffpir,
        grid=[{"lambda_": lam, "zeta": zeta} for lam, zeta in ((0.3, 0.5), (1.0, 0.5), (1.0, 1.0), (7.0, 0.5))]),
    Row(f"nested DDRM {NESTED_OUTER}×", "ipsolve", ipsolve_nested_ddrm),
    Row("ΠGDM tuned", "deepinv", deepinv_pigdm,
        grid=[{"clip": clip, "weight": weight} for clip, weight in ((False, 1.0), (True, 1.0), (True, 2.0), (True, 4.0))]),
    Row("ΠGDM", "ipsolve", ipsolve_pigdm),
    Row("ΠGDM tuned", "ipsolve", ipsolve_pigdm, grid=[{"weight": w} for w in solvers.PIGDM_WEIGHTS],
        default=("ΠGDM", lambda task: {"weight": "code"})),
    Row("ΠGDM clip_x0 tuned", "ipsolve", ipsolve_pigdm,  # x̂₀ clamped as deepinv's clip; safeguard off: its step
        grid=[{"clip_x0": True, "weight": "code"}, {"clip_x0": True, "weight": "score"},
              {"clip_x0": True, "weight": "score", "safeguard": False}]),
    Row("ΠGDM deepinv r² tuned", "ipsolve", ipsolve_pigdm,  # deepinv's ΠGDM step (clamp, r², λ), tuned as its
        grid=[{"clip_x0": True, "weight": "score", "safeguard": False, "r2": "deepinv", "guidance_scale": scale}
              for scale in (1.0, 2.0, 4.0)]),
    Row("DPS tuned", "deepinv", deepinv_dps, grid=[{"weight": w} for w in (30.0, 100.0, 300.0, 1000.0)]),
    Row("DPS", "ipsolve", ipsolve_dps),
    Row("DPS tuned", "ipsolve", ipsolve_dps, grid=[{"step_size": z} for z in (0.1, 0.2, 0.4, 0.8)],
        default=("DPS", lambda task: {"step_size": restore_defaults("dps", task)["step_size"]})),
]
# (ipsolve row, deepinv row) compared image by image
PAIRS = [(("DDRM", "ipsolve"), ("DDRM", "deepinv")),
         (("DDRM noise ×1/√2", "ipsolve"), ("DDRM, ipsolve's grid", "deepinv")),
         (("DDRM noise ×1/√2, deepinv's grid", "ipsolve"), ("DDRM", "deepinv")),
         ((f"nested DDRM {NESTED_OUTER}×", "ipsolve"), ("DDRM", "deepinv")),
         (("ΠGDM", "ipsolve"), ("ΠGDM tuned", "deepinv")),
         (("ΠGDM tuned", "ipsolve"), ("ΠGDM tuned", "deepinv")),
         (("ΠGDM clip_x0 tuned", "ipsolve"), ("ΠGDM tuned", "deepinv")),
         (("ΠGDM deepinv r² tuned", "ipsolve"), ("ΠGDM tuned", "deepinv")),
         (("DPS", "ipsolve"), ("DPS tuned", "deepinv")),
         (("DPS tuned", "ipsolve"), ("DPS tuned", "deepinv")),
         (("DDRM", "ipsolve"), ("DiffPIR tuned", "deepinv"))]


def problem(network, task, clean):
    """The task's operator (ipsolve's packaged task) and noise level (eval_embedded's), y from SEED."""
    config = load_task(task)
    op = degradations.make(config.operator, channels=1, image_size=(32, 32), seed=config.seed, **config.params)
    sigma_y = SIGMA_Y[task]
    y = measure(clean, op, sigma_y, SEED)
    y_pixel = (y + op.H(torch.ones_like(clean))) / 2  # H x_pixel + σ_y/2 n, with x_pixel = (x + 1)/2
    return Problem(network, task, clean, op, sigma_y, y, to_deepinv(op, sigma_y), y_pixel)


@dataclass
class Result:
    psnr: torch.Tensor  # per image; NaN where the answer is not finite
    calls: int
    seconds: float
    error: str = ""  # the exception that stopped the run, if one did


def run_row(row, p, n, params):
    """Run one row on a problem: per-image PSNR, network calls, CPU seconds."""
    before, start = p.network.calls.count, time.process_time()
    try:
        x, error = row.run(p, n, **params), ""
    except Exception as failure:  # a diverged run (NaN met by a solver or an operator) scores NaN
        x, error = torch.full_like(p.clean, torch.nan), f"{type(failure).__name__}: {failure}"
    seconds, calls = time.process_time() - start, p.network.calls.count - before
    scores = psnr(x.float(), from_model(p.clean)).float()
    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    return Result(torch.where(finite, scores, torch.nan), calls, seconds, error)


def tune(row, p, n):
    """The grid point with the best mean validation PSNR (a NaN counts as −∞), and every point's score."""
    scores = {}
    for point in row.grid:
        result = run_row(row, p, n, point)
        scores[tuple(point.items())] = result.psnr.mean().item() if result.psnr.isfinite().all() else -math.inf
    best = max(scores, key=scores.get)
    return dict(best), scores


def mean_error(values):
    values = values[values.isfinite()] if values.isfinite().any() else values
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def bench(args, network, test, validation):
    """{(task, n): {(name, library): (Result, params)}} and the validation scores."""
    results, tuning = {}, {}
    for task in args.tasks:
        test_problem, val_problem = problem(network, task, test), problem(network, task, validation)
        for n in args.budgets:
            start, rows = time.time(), {}
            for row in [row for row in ROWS if not args.methods or row.name in args.methods]:
                params = {}
                if row.grid:
                    params, tuning[task, n, row.name, row.library] = tune(row, val_problem, n)
                default_run = row.default and (row.default[0], row.library) in rows
                if default_run and params == row.default[1](task):  # the default row's run, not repeated
                    rows[row.name, row.library] = rows[row.default[0], row.library][0], params
                else:
                    rows[row.name, row.library] = run_row(row, test_problem, n, params), params
            results[task, n] = rows
            print(f"  {task} {n} calls: {time.time() - start:.0f} s", file=sys.stderr)
    return results, tuning


def fmt(mean, error):
    return "NaN" if math.isnan(mean) else f"{mean:.2f} ± {error:.2f}"


def cell(result):
    bad = int((~result.psnr.isfinite()).sum())
    text = fmt(*mean_error(result.psnr))
    if bad == len(result.psnr):
        return f"NaN ({result.error.split(':')[0]})" if result.error else "NaN"
    return text if bad == 0 else f"{text} ({bad} NaN)"


def params_text(params):
    def text(name, value):
        if isinstance(value, bool):
            return f"{name} {'on' if value else 'off'}"
        return f"{name.rstrip('_')} {value:g}" if isinstance(value, float) else f"{name} {value}"
    return ", ".join(text(name, value) for name, value in params.items()) or "defaults"


def rows_table(results):
    lines = ["| task | calls | library | method | PSNR (dB) | network calls | CPU s | tuned |",
             "|---|---:|---|---|---:|---:|---:|---|"]
    for (task, n), rows in results.items():
        for (name, library), (result, params) in rows.items():
            lines.append(f"| {task} ({SIGMA_Y[task]}) | {n} | {library} | {name} | {cell(result)} | {result.calls} | "
                         f"{result.seconds:.1f} | {params_text(params)} |")
    return lines


def pairs_table(results):
    lines = ["| task | calls | ipsolve | deepinv | ipsolve − deepinv (dB) | CPU deepinv ÷ ipsolve |",
             "|---|---:|---|---|---:|---:|"]
    for (task, n), rows in results.items():
        for ours, theirs in [pair for pair in PAIRS if all(row in rows for row in pair)]:
            a, b = rows[ours][0], rows[theirs][0]
            difference = a.psnr - b.psnr
            text = "NaN" if difference.isnan().all() else fmt(*mean_error(difference))
            if difference.isnan().any() and not difference.isnan().all():
                text += f" ({int(difference.isnan().sum())} NaN left out)"
            lines.append(f"| {task} | {n} | {ours[0]} | {theirs[0]} | {text} | {b.seconds / a.seconds:.2f} |")
    return lines


def tuning_table(tuning):
    lines = ["| task | calls | library | method | validation PSNR per grid point (chosen in bold) |", "|---|---:|---|---|---|"]
    for (task, n, name, library), scores in tuning.items():
        best = max(scores, key=scores.get)
        points = [("**{}: {:.2f}**" if point == best else "{}: {:.2f}").format(params_text(dict(point)), score)
                  for point, score in scores.items()]
        lines.append(f"| {task} | {n} | {library} | {name} | {'; '.join(points)} |")
    return lines


def machine():
    """The CPU's model name and count (Linux), else the platform's."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def report(args, results, tuning, seconds):
    command = "python scripts/bench_vs_deepinv.py " + " ".join(sys.argv[1:])
    lines = ["# ipsolve vs DeepInverse", "", f"Command: `{command.strip()}` ({seconds / 60:.0f} min)", "",
             f"Versions: ipsolve (this commit), deepinv {dinv.__version__}, torch {torch.__version__}, Python "
             f"{platform.python_version()}. Machine: {machine()}; torch on 1 thread, CPU time is process time.", "",
             "Model: `load_model(\"embedded\")`, the 1×32×32 MNIST DDPM, for both libraries in one process; deepinv "
             "runs it through `ipsolve.interop.deepinv.as_denoiser` (exact at the model's timesteps) and the SVD "
             "operators through `to_deepinv`.", "",
             f"Digits: test `mnist32(\"test\")[:{args.images}]`; validation the last {args.val_images} of "
             "`mnist32(\"test\")` (disjoint). Tasks: the operators of ipsolve's packaged tasks deno, sr4 and inp "
             "(`ipsolve/configs/tasks`), with the embedded model's noise levels σ_y (model units, "
             "`scripts/eval_embedded.py`; deepinv gets σ_y/2 and y on [0, 1] images); one noise draw per task, the "
             "same for both libraries.", "",
             "Calls: every forward pass of the network is counted by a hook on the network itself, whichever "
             "library made it; the column shows the count, not the budget. Rows run one after another, the two "
             "libraries alternating, so that the machine's load is shared. Tuned rows: the option with the best "
             "mean validation PSNR per task and budget (grids below); a tuned row whose choice is the library's "
             "default is that row's run.", "",
             "PSNR on [0, 1] images: mean ± standard error over the test digits; paired differences are per "
             "digit, mean ± standard error.", "",
             "## Every row", "", *rows_table(results), "",
             "## Paired differences", "", *pairs_table(results), "",
             "## Validation", "", *tuning_table(tuning), ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="test digits: the first N of mnist32('test')")
    parser.add_argument("--val-images", type=int, default=8, help="validation digits: the last N of mnist32('test')")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="network calls per run")
    parser.add_argument("--tasks", nargs="+", default=list(SIGMA_Y), choices=list(SIGMA_Y))
    parser.add_argument("--methods", nargs="+", choices=sorted({row.name for row in ROWS}), metavar="METHOD",
                        help="run only the rows of these methods (e.g. 'ΠGDM' 'ΠGDM tuned'); default: every row")
    parser.add_argument("--quick", action="store_true", help="8 test digits, 4 validation digits, 20 calls")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "vs_deepinv.md")
    args = parser.parse_args()
    if args.quick:
        args.images, args.val_images, args.budgets = 8, 4, [20]
    for n in args.budgets:
        if n < NESTED_OUTER or n % NESTED_OUTER:
            parser.error(f"--budgets: {n} is not a multiple of {NESTED_OUTER} (the nested run's outer steps)")
    torch.set_num_threads(1)
    digits = mnist32("test")
    if args.images + args.val_images > len(digits):
        parser.error(f"--images + --val-images must be at most {len(digits)}")
    test = to_model(torch.from_numpy(digits[:args.images]))
    validation = to_model(torch.from_numpy(digits[len(digits) - args.val_images:]))
    start = time.time()
    with torch.no_grad():
        results, tuning = bench(args, Network.embedded(), test, validation)
    text = report(args, results, tuning, time.time() - start)
    print(text)
    args.out.write_text(text + "\n" + READING_MARKER + kept_reading(args.out))


if __name__ == "__main__":
    main()
