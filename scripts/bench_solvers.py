"""Solvers benchmark: DDRM, DDNM, ΠGDM and DPS, plain and nested, at 10/20/30 NFE, and their cost per NFE.

Two settings, each on held-out images (mean over images and seeds, one sample per image):

* photo patches 3×8×8 (deno, sr4, inp 50 %, color): a Gaussian mixture fitted by EM to patches of the
  bundled photos (`bench_anytime.photo_patches`) is the diffusion model itself, so the exact posterior mean
  (the MMSE bound) and an exact posterior sample are printed as bounds; σ_y as bench_anytime's (sr4 as its
  sr2);
* the embedded MNIST 32×32 model (deno, sr4, inp), held-out digits `mnist32("test")`, σ_y as
  eval_embedded's; PSNR and LPIPS (AlexNet; the patches are too small for LPIPS).

Plain: one run per budget (10, 20, 30 calls) on the grid `ipsolve restore --vanilla` uses, its final answer.
Nested: one run of 3 outer × 10 inner steps, its previews at 10, 20, 30 NFE. Solver options are the
solvers' defaults (DDRM η = 0.85, η_b = 1; DDNM η = 0.85; ΠGDM η = 1), DPS's those `ipsolve restore` gives it
per task (`ipsolve.config.restore_defaults`: the "beta" step schedule), or with --dps-published the published
ζ = 1 at every step. PSNR on [0, 1] images.

Cost per NFE: CPU time (one thread) per call of the plain 30-call run, over the CPU time of one forward
pass of the model on the same batch (median of 5, timed just before the solver's runs), mean over tasks
and seeds. Nested final − plain final: mean over images and seeds of the per-image PSNR difference, with
its standard error.

A run whose x̂₀ is not finite or exceeds DIVERGED in magnitude for any image of the batch (the images run
together, as one batch) is stopped and reported as diverged, its later previews with it.

Targets: every nested final (30 NFE) within 0.2 dB of the same solver run plainly with 30 NFE; ΠGDM and
DPS at most 3.5 forward passes per NFE.

The report (markdown) is printed and written to --out; whatever follows the line READING_MARKER in an
existing --out file (a reading of the numbers) is kept below the new tables.

Usage: python scripts/bench_solvers.py [--images 8] [--patches 128] [--seeds 0] [--components 10]
       [--solvers ddrm ddnm pigdm dps] [--dps-published]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import degradations
import solvers
from bench_anytime import SIGMA_Y, photo_patches
from eval_embedded import TASKS as DIGIT_TASKS
from ipsolve.config import restore_defaults
from ipsolve.datasets import mnist32
from ipsolve.imageio import from_model, to_model
from ipsolve.metrics import lpips_distance, psnr
from ipsolve.models import GaussianMixturePrior, load_model
from ipsolve.models.schedules import alphas_cumprod_from_betas

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ["ddrm", "ddnm", "pigdm", "dps"]  # --solvers narrows it
GUIDED = ("pigdm", "dps")  # one backward pass through the network per call
BUDGETS = (10, 20, 30)
OUTER, INNER = 3, 10
PATCH_TASKS = {"deno": SIGMA_Y["deno"], "sr4": SIGMA_Y["sr2"], "inp": SIGMA_Y["inp"], "color": SIGMA_Y["color"]}
NESTED_TOLERANCE_DB, COST_TARGET = 0.2, 3.5
DIVERGED = 1e4  # |x̂₀| beyond this (model units): the run has diverged
READING_MARKER = "<!-- reading below: kept when the benchmark rewrites this file -->"


DPS_OPTIONS = {"published": False}  # --dps-published: solvers.dps's own defaults instead of restore's


def measured(solver, y, op, sigma_y):
    """The measurement keywords `solver` takes (DPS: the forward only) and its options (DPS: restore's for
    the task unless --dps-published)."""
    if solver != "dps":
        return {"y": y, "op": op, "sigma_y": sigma_y}
    return {"y": y, "forward": op, **({} if DPS_OPTIONS["published"] else restore_defaults("dps", op.name))}


class Diverged(Exception):
    """A run whose x̂₀ left every plausible image range (images live in [−1, 1])."""


def watching(calls):
    """callback(info) that appends each call's nfe to `calls` and raises Diverged when x̂₀ is not finite or
    exceeds DIVERGED in magnitude."""
    def callback(info):
        calls.append(info["nfe"])
        if not torch.isfinite(info["x0"]).all() or info["x0"].abs().max() > DIVERGED:
            raise Diverged
    return callback


def forward_seconds(model, like, repeats=5):
    """Median CPU seconds of one model call on a batch shaped like `like` (t = 500)."""
    t = torch.full((like.shape[0],), 500, dtype=torch.long)
    times = []
    with torch.no_grad():
        model(like, t)
        for _ in range(repeats):
            start = time.process_time()
            model(like, t)
            times.append(time.process_time() - start)
    return statistics.median(times)


def plain_runs(model, solver, y, op, sigma_y, seed):
    """{nfe: final answer, None if it diverged} of one plain run per budget, and the CPU seconds per call of
    the longest run."""
    answers = {}
    for nfe in BUDGETS:
        grid, calls, start = solvers.plain_ddrm_timesteps(nfe, len(model.alphas_cumprod)), [], time.process_time()
        try:
            answers[nfe] = getattr(solvers, solver)(model, timesteps=grid, callback=watching(calls),
                                                    generator=torch.Generator().manual_seed(seed),
                                                    **measured(solver, y, op, sigma_y))
        except Diverged:
            answers[nfe] = None
        per_call = (time.process_time() - start) / len(calls)
    return answers, per_call


def nested_previews(model, solver, y, op, sigma_y, seed):
    """{nfe: preview, None after a divergence} of one nested run of OUTER × INNER calls."""
    run = solvers.nested(model, solver, outer_steps=OUTER, inner_steps=INNER, callback=watching([]),
                         generator=torch.Generator().manual_seed(seed), **measured(solver, y, op, sigma_y))
    previews = {}
    try:
        for preview in run:
            previews[preview.nfe] = preview.x0
    except Diverged:
        pass
    return {nfe: previews.get(nfe) for nfe in BUDGETS}


def image_psnr(x, clean):
    """Per-image PSNR (B,) of model-space images, on [0, 1] after clamping; NaN everywhere for x = None."""
    return torch.full((len(clean),), math.nan) if x is None else psnr(from_model(x), from_model(clean)).float()


def scores(answers, clean, with_lpips):
    """{nfe: (per-image PSNR, per-image LPIPS or None)}; NaN for a diverged answer."""
    def lpips(x):
        if not with_lpips:
            return None
        return image_psnr(x, clean) if x is None else lpips_distance(from_model(x), from_model(clean)).float()
    return {nfe: (image_psnr(x, clean), lpips(x)) for nfe, x in answers.items()}


def measure(clean, op, sigma_y, seed):
    """y = H x + σ_y n, the noise drawn from `seed`."""
    clean_y = op.H(clean)
    noise = torch.randn(clean_y.shape, generator=torch.Generator().manual_seed(seed), dtype=clean_y.dtype)
    return clean_y + sigma_y * noise


def bench_task(model, clean, task, sigma_y, seed, with_lpips):
    """({(solver, "plain"|"nested"): {nfe: (PSNR, LPIPS)}}, {solver: cost per NFE in forward passes}, y, op)."""
    channels, height, width = clean.shape[1:]
    op = degradations.make(task, channels=channels, image_size=(height, width), seed=seed)
    y = measure(clean, op, sigma_y, seed)
    rows, costs = {}, {}
    with torch.no_grad():
        for solver in SOLVERS:
            forward = forward_seconds(model, clean)
            plain, per_call = plain_runs(model, solver, y, op, sigma_y, seed + 1)
            rows[solver, "plain"] = scores(plain, clean, with_lpips)
            rows[solver, "nested"] = scores(nested_previews(model, solver, y, op, sigma_y, seed + 1), clean, with_lpips)
            costs[solver] = per_call / forward
    return rows, costs, y, op


def exact_bounds(prior, clean, y, op, sigma_y, seed):
    """Rows of the exact posterior mean and of one exact posterior sample per image (PSNR only)."""
    posterior = prior.posterior(y, op, sigma_y)
    sample = posterior.sample(1, generator=torch.Generator().manual_seed(seed))[0]
    mean = posterior.mean.reshape(clean.shape)
    return {("exact posterior mean", "bound"): {nfe: (image_psnr(mean, clean), None) for nfe in BUDGETS},
            ("exact posterior sample", "bound"): {nfe: (image_psnr(sample, clean), None) for nfe in BUDGETS}}


def pooled(tables):
    """{key: {nfe: (psnr, lpips)}} tables of per-image scores (one per seed) joined image-wise."""
    def join(values):
        return None if values[0] is None else torch.cat(values)
    return {key: {nfe: tuple(join([t[key][nfe][i] for t in tables]) for i in range(2)) for nfe in BUDGETS}
            for key in tables[0]}


def bench_setting(model, clean, tasks, seeds, with_lpips, prior=None):
    """{task: pooled rows} and {solver: mean cost per NFE} for one model and its held-out images."""
    results, costs = {}, {solver: [] for solver in SOLVERS}
    for task, sigma_y in tasks.items():
        start, per_seed = time.time(), []
        for seed in seeds:
            rows, cost, y, op = bench_task(model, clean, task, sigma_y, seed, with_lpips)
            if prior is not None:
                rows.update(exact_bounds(prior, clean, y, op, sigma_y, seed))
            per_seed.append(rows)
            for solver in SOLVERS:
                costs[solver].append(cost[solver])
        results[task] = pooled(per_seed)
        print(f"  {task}: {time.time() - start:.0f} s", file=sys.stderr)
    return results, {solver: sum(values) / len(values) for solver, values in costs.items()}


def fitted_benchmark(train, test, components, em_iterations, count):
    """An exact-prior benchmark: a `components`-component mixture fitted by EM (`em_iterations`, seed 0) to
    `train` — the diffusion model itself — and `count` of the held-out images `test`, drawn at random (seed 1)."""
    alphas_cumprod = alphas_cumprod_from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    prior = GaussianMixturePrior.fit(train, components, alphas_cumprod, iterations=em_iterations,
                                     generator=torch.Generator().manual_seed(0))
    return prior, test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:count]]


def patch_setting(args, seeds):
    train, test = photo_patches(patch=8)
    prior, clean = fitted_benchmark(train, test, args.components, args.em_iterations, args.patches)
    results, costs = bench_setting(prior, clean, PATCH_TASKS, seeds, with_lpips=False, prior=prior)
    title = (f"photo patches 3×8×8: {args.components}-component mixture ({args.em_iterations} EM iterations on "
             f"{len(train)} patches), {len(clean)} held-out patches")
    return title, PATCH_TASKS, results, costs


def digit_setting(args, seeds):
    model = load_model("embedded")
    clean = to_model(torch.from_numpy(mnist32("test")[:args.images]))
    results, costs = bench_setting(model, clean, DIGIT_TASKS, seeds, with_lpips=True)
    return f"embedded MNIST 1×32×32: held-out digits mnist32('test')[:{len(clean)}]", DIGIT_TASKS, results, costs


def cell(psnr, lpips):
    """Mean PSNR (/ mean LPIPS) over the images, or "diverged"."""
    if psnr.isnan().any():
        return "diverged"
    return f"{psnr.mean():.2f}" if lpips is None else f"{psnr.mean():.2f} / {lpips.mean():.3f}"


def results_table(tasks, results):
    lines = ["| task (σ_y) | solver | run | " + " | ".join(f"NFE {nfe}" for nfe in BUDGETS) + " |",
             "|---|---|---|" + "---:|" * len(BUDGETS)]
    for task, rows in results.items():
        for (solver, mode), row in rows.items():
            lines.append(f"| {task} ({tasks[task]}) | {solver} | {mode} | "
                         + " | ".join(cell(*row[nfe]) for nfe in BUDGETS) + " |")
    return lines


def gap_cell(nested, plain):
    """Mean of the per-image differences ± their standard error, ✓ when the mean is within the tolerance."""
    differences = nested - plain
    if differences.isnan().any():
        return "diverged ✗"
    gap, error = differences.mean().item(), (differences.std() / math.sqrt(len(differences))).item()
    return f"{gap:+.2f} ± {error:.2f} {'✓' if gap >= -NESTED_TOLERANCE_DB else '✗'}"


def nested_gap_table(results):
    """Nested final − plain final (30 NFE), dB, per task and solver, against the 0.2 dB target (± the
    standard error of the mean of the per-image differences)."""
    lines = ["| task | " + " | ".join(SOLVERS) + " |", "|---|" + "---:|" * len(SOLVERS)]
    for task, rows in results.items():
        final = BUDGETS[-1]
        lines.append(f"| {task} | " + " | ".join(
            gap_cell(rows[s, "nested"][final][0], rows[s, "plain"][final][0]) for s in SOLVERS) + " |")
    return lines


def cost_table(costs):
    lines = ["| solver | forward passes per NFE | target |", "|---|---:|---|"]
    for solver, cost in costs.items():
        target = (f"≤ {COST_TARGET}: {'met' if cost <= COST_TARGET else 'missed'}" if solver in GUIDED else "—")
        lines.append(f"| {solver} | {cost:.2f} | {target} |")
    return lines


def dps_setting() -> str:
    if DPS_OPTIONS["published"]:
        return "ζ = 1 at every step (published)"
    return ("restore's per-task defaults: " + "; ".join(
        f"{task} ζ = {restore_defaults('dps', task)['step_size']} ({restore_defaults('dps', task)['step_schedule']})"
        for task in ("deno", "sr4", "inp", "color")))


def report(settings, command, sizes):
    lines = ["# Solvers benchmark: DDRM, DDNM, ΠGDM and DPS, plain and nested", "",
             f"Command: `{command}`", "", f"Sizes: {sizes}.", "",
             "Each cell is PSNR (dB) after that many model calls, or PSNR / LPIPS on the embedded model; plain: "
             "a separate run per budget (final answer), nested: one 3 × 10 run (previews). Solver defaults: DDRM "
             f"η = 0.85, η_b = 1; DDNM η = 0.85; ΠGDM η = 1; DPS {dps_setting()}. Costs are CPU time per NFE over "
             "the CPU time of one forward pass (one thread, same batch).", ""]
    for title, tasks, results, costs in settings:
        lines += [f"## {title}", "", *results_table(tasks, results), "",
                  f"Nested final − plain final at {BUDGETS[-1]} NFE "
                  f"(dB, mean ± standard error over images and seeds; ✓ within {NESTED_TOLERANCE_DB} dB or better):",
                  "", *nested_gap_table(results), "", "Cost per NFE:", "", *cost_table(costs), ""]
    return "\n".join(lines)


def kept_reading(path):
    """What follows READING_MARKER in the existing report, if any."""
    text = path.read_text() if path.exists() else ""
    return text.split(READING_MARKER, 1)[1] if READING_MARKER in text else "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8, help="held-out digits (embedded model)")
    parser.add_argument("--patches", type=int, default=128, help="held-out photo patches (mixture prior)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="measurement and sampler seeds")
    parser.add_argument("--components", type=int, default=10, help="mixture components")
    parser.add_argument("--em-iterations", type=int, default=20, help="EM iterations of the mixture fit")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--dps-published", action="store_true", help="DPS with ζ = 1 at every step (published)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "solvers_benchmark.md")
    args = parser.parse_args()
    SOLVERS[:] = args.solvers
    DPS_OPTIONS["published"] = args.dps_published
    torch.set_num_threads(1)
    start = time.time()
    settings = [patch_setting(args, args.seeds), digit_setting(args, args.seeds)]
    sizes = (f"{args.patches} patches, {args.images} digits, seeds {' '.join(map(str, args.seeds))}, "
             f"{args.components} components, {args.em_iterations} EM iterations; {time.time() - start:.0f} s")
    command = "python scripts/bench_solvers.py " + " ".join(sys.argv[1:])
    text = report(settings, command.strip(), sizes)
    print(text)
    args.out.write_text(text + "\n" + READING_MARKER + kept_reading(args.out))


if __name__ == "__main__":
    main()
