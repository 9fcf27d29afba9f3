"""Posterior mean and std from K samples against the exact posterior, and the mean's gain over one sample.

a. Exact-posterior benchmarks (the diffusion model is a Gaussian mixture, so p(x₀ | y) is known):
   photo patches 3×8×8 (`bench_solvers.fitted_benchmark` on `bench_anytime.photo_patches`) and MNIST digits
   at 1×8×8 (`bench_anytime.mnist_digits`), tasks deno / sr4 / inp with bench_solvers' σ_y. DDRM, DDNM, ΠGDM
   and DPS (bench_solvers' options) draw 16 samples per image in one plain run per budget (10, 20, 30, 100
   calls), nested DDRM in one run of 10 + 10 + 10 + 70 calls (its previews). For K = 1 … 16 the mean of K
   draws is taken over each of the 16 / K disjoint groups; its MSE (model units, averaged over groups and
   images) is reported as MSE(mean of K) / (MMSE · (1 + 1/K)), MMSE the MSE of the exact posterior mean on
   the same images: exact posterior draws give 1 (the "exact draws" row shows its Monte-Carlo spread).
   The std of K draws (`solvers.estimate`) against the exact posterior std √diag Cov[x₀ | y]: the ratio of
   the mean variances (1 for exact draws: the K − 1 variance is unbiased), the mean relative error
   |std − exact| / exact per pixel, and the correlation of the two maps (per image, averaged).
b. The embedded MNIST model on held-out digits (tasks deno / sr4 / inp as the packaged task files define
   them), nested DDRM 4 outer × 5 inner with samples=8: the PSNR of the mean of 8 at 20 calls against the
   best single preview (the NFE whose previews score best on average: for sample 0, and for every sample).
c. The anytime curve: the mean estimate's PSNR at every preview beside the samples' (from the runs of b).
d. Pictures: samples, mean and std of one digit and one photo patch (with the exact posterior's).

Writes docs/posterior_estimates.md (what follows READING_MARKER in it is kept), the curve's block in
docs/anytime_schedule.md and docs/images/posterior_{digit,patch,anytime}.png; --quick only prints.

Usage: python scripts/bench_posterior.py [--patches 64] [--images 64] [--components 10] [--em-iterations 20]
       [--batch 32] [--quick]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import degradations
import solvers
from bench_anytime import mnist_digits, photo_patches
from bench_solvers import (PATCH_TASKS, READING_MARKER, fitted_benchmark, image_psnr, kept_reading, measure,
                           measured)
from ipsolve.config import load_task
from ipsolve.datasets import mnist32
from ipsolve.figures import labelled_grid, measurement_picture, std_picture
from ipsolve.imageio import from_model, save_picture, std_from_model, to_model
from ipsolve.models import load_model

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BUDGETS = (10, 20, 30, 100)
NESTED_RUNS = [10, 10, 10, 70]  # nested DDRM's inner runs: previews after 10, 20, 30 and 100 calls
COUNTS = (1, 2, 4, 8, 16)  # K; the 16 draws per image split into 16 / K groups
DRAWS = COUNTS[-1]
STD_COUNTS = (4, 16)
MIXTURE_TASKS = {task: PATCH_TASKS[task] for task in ("deno", "sr4", "inp")}
PLAIN_RUNS = {"ddrm": ("ddrm", {}), "ddnm": ("ddnm", {}), "pigdm": ("pigdm", {}), "dps": ("dps", {}),
              "ddrm η = 1": ("ddrm", {"eta": 1.0})}  # row → (solver, options beyond bench_solvers')
RATIO_TARGET, RATIO_SOLVERS = 1.10, ("ddrm", "ddnm")  # at 100 calls
# the packaged tasks (deno: σ_y 1.0 pixel, the paper's), and deno at 0.1 pixel, where the previews of single
# samples peak before the final (issue 20's measurement)
DIGIT_TASKS = {"deno": "deno", "deno 0.1 px": {"name": "deno", "operator": "deno", "sigma_y_pixel": 0.1},
               "sr4": "sr4", "inp": "inp"}
DIGIT_OUTER, DIGIT_INNER, DIGIT_SAMPLES = 4, 5, 8
GAIN_TARGET_DB = 1.0
CURVE_BEGIN = "<!-- posterior curve: written by scripts/bench_posterior.py -->"
CURVE_END = "<!-- end of posterior curve -->"
CURVE_BEFORE = "## What was tried"  # where the block goes in anytime_schedule.md the first time


# ------------------------------------------------------------------------------- a. exact posteriors
def solver_draws(prior, solver, y, op, sigma_y, seed, **extra):
    """{nfe: (B, DRAWS, C, H, W)} of one solver: a plain run per budget (DDRM's grid for that many calls)."""
    options = {**measured(solver, y, op, sigma_y), **extra}
    options.pop("y")
    return {nfe: solvers.sample_estimate(getattr(solvers, solver), prior, y, DRAWS, generator=generator(seed),
                                         timesteps=solvers.plain_ddrm_timesteps(nfe), **options).samples
            for nfe in BUDGETS}


def nested_draws(prior, y, op, sigma_y, seed):
    """{nfe: (B, DRAWS, C, H, W)}: the previews of one nested DDRM run (NESTED_RUNS)."""
    run = solvers.nested(prior, "ddrm", outer_steps=len(NESTED_RUNS), inner_steps=NESTED_RUNS, samples=DRAWS,
                         generator=generator(seed), y=y, op=op, sigma_y=sigma_y)
    return {preview.nfe: preview.estimate.samples for preview in run}


def generator(seed):
    return torch.Generator().manual_seed(seed)


def mean_ratio(draws, clean, mmse, count):
    """(ratio, standard error): MSE(mean of `count` draws) / (MMSE · (1 + 1/count)), the MSE per image
    averaged over its DRAWS / count groups; the error by the delta method over the images' terms."""
    batch = len(clean)
    means = draws.reshape(batch, DRAWS // count, count, *clean.shape[1:]).mean(2)
    errors = (means - clean[:, None]).square().flatten(2).mean(2).mean(1)
    reference = mmse * (1 + 1 / count)
    ratio = errors.mean() / reference.mean()
    error = (errors - ratio * reference).std() / (math.sqrt(batch) * reference.mean())
    return ratio.item(), error.item()


def std_scores(draws, exact_std, count):
    """(variance ratio, mean relative error, correlation) of the std map of `count` draws (`solvers.estimate`
    on each of the DRAWS / count groups) against the exact posterior std, averaged over groups and images."""
    batch, groups = len(exact_std), DRAWS // count
    std = solvers.estimate(draws.reshape(batch * groups, count, *exact_std.shape[1:])).std
    exact = exact_std.repeat_interleave(groups, 0)
    variance_ratio = std.square().mean() / exact.square().mean()
    relative = ((std - exact).abs() / exact).mean()
    a, b = std.flatten(1), exact.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    correlation = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)).mean()
    return variance_ratio.item(), relative.item(), correlation.item()


def mixture_task(prior, clean, task, sigma_y, seed=0):
    """{method: {nfe: {"ratio": {K: (r, se)}, "std": {K: scores}}}} and the first image's pictures."""
    channels, height, width = clean.shape[1:]
    op = degradations.make(task, channels=channels, image_size=(height, width), seed=seed)
    y = measure(clean, op, sigma_y, seed)
    posterior = prior.posterior(y, op, sigma_y)
    exact_mean = posterior.mean
    exact_std = posterior.covariance.diagonal(dim1=1, dim2=2).sqrt().reshape(clean.shape)
    mmse = (exact_mean - clean).square().flatten(1).mean(1)
    exact = posterior.sample(DRAWS, generator=generator(seed + 2)).transpose(0, 1)
    draws = {"exact draws": {nfe: exact for nfe in BUDGETS}}
    with torch.no_grad():
        for method, (solver, extra) in PLAIN_RUNS.items():
            draws[method] = solver_draws(prior, solver, y, op, sigma_y, seed + 1, **extra)
        draws["nested ddrm"] = nested_draws(prior, y, op, sigma_y, seed + 1)
    rows = {method: {nfe: {"ratio": {k: mean_ratio(d, clean, mmse, k) for k in COUNTS},
                           "std": {k: std_scores(d, exact_std, k) for k in STD_COUNTS}}
                     for nfe, d in by_nfe.items()} for method, by_nfe in draws.items()}
    pictures = {"clean": clean[0], "y": y[:1], "op": op, "ddrm": draws["ddrm"][BUDGETS[-1]][0],
                "exact": exact[0], "exact mean": exact_mean[0], "exact std": exact_std[0]}
    return rows, pictures


def mixture_benchmarks(args):
    """[(title, {task: rows}, pictures of the first task's first image)] for the photo patches and MNIST 8×8."""
    benchmarks = []
    for name, (train, test) in (("photo patches 3×8×8", photo_patches(patch=8)),
                                ("MNIST 1×8×8", (mnist_digits("train"), mnist_digits("test")))):
        start = time.time()
        prior, clean = fitted_benchmark(train, test, args.components, args.em_iterations, args.patches)
        results, pictures = {}, {}
        for task, sigma_y in MIXTURE_TASKS.items():
            results[task], pictures[task] = mixture_task(prior, clean, task, sigma_y)
            print(f"  {name} {task}: {time.time() - start:.0f} s", file=sys.stderr)
        title = (f"{name}: {args.components}-component mixture ({args.em_iterations} EM iterations on "
                 f"{len(train)} images), {len(clean)} held-out images")
        benchmarks.append((title, results, pictures))
    return benchmarks


def ratio_cell(value):
    ratio, error = value
    return f"{ratio:.3f} ± {error:.3f}"


def ratio_tables(results):
    """At 100 calls by K (target for DDRM and DDNM), and at K = 1 / 16 by budget."""
    final = BUDGETS[-1]
    by_count = ["| task | method | " + " | ".join(f"K = {k}" for k in COUNTS) + f" | ≤ {RATIO_TARGET} |",
                "|---|---|" + "---:|" * len(COUNTS) + "---|"]
    by_budget = ["| task | method | " + " | ".join(f"{nfe} calls" for nfe in BUDGETS) + " |",
                 "|---|---|" + "---:|" * len(BUDGETS)]
    for task, rows in results.items():
        for method, by_nfe in rows.items():
            ratios = by_nfe[final]["ratio"]
            verdict = ""
            if method in RATIO_SOLVERS:
                verdict = "met" if max(r for r, _ in ratios.values()) <= RATIO_TARGET else "missed"
            by_count.append(f"| {task} | {method} | " + " | ".join(ratio_cell(ratios[k]) for k in COUNTS)
                            + f" | {verdict} |")
            by_budget.append(f"| {task} | {method} | " + " | ".join(
                f"{by_nfe[nfe]['ratio'][1][0]:.2f} / {by_nfe[nfe]['ratio'][DRAWS][0]:.2f}" for nfe in BUDGETS) + " |")
    return by_count, by_budget


def std_table(results):
    head = ("| task | method | " + " | ".join(f"var. ratio {nfe}" for nfe in BUDGETS) + " | "
            + " | ".join(f"rel. error K = {k}" for k in STD_COUNTS) + f" | corr. K = {DRAWS} |")
    lines = [head, "|---|---|" + "---:|" * (len(BUDGETS) + len(STD_COUNTS) + 1)]
    final = BUDGETS[-1]
    for task, rows in results.items():
        for method, by_nfe in rows.items():
            scores = by_nfe[final]["std"]
            lines.append(f"| {task} | {method} | "
                         + " | ".join(f"{by_nfe[nfe]['std'][DRAWS][0]:.2f}" for nfe in BUDGETS) + " | "
                         + " | ".join(f"{scores[k][1]:.2f}" for k in STD_COUNTS) + f" | {scores[DRAWS][2]:.2f} |")
    return lines


# ------------------------------------------------------------------------------- b, c. embedded model
def digit_task(model, clean, task_reference, batch, seed=0):
    """{nfe: (mean estimate PSNR (N,), sample PSNRs (N, K))} of nested DDRM with samples=K, and the first
    digit's pictures."""
    task = load_task(task_reference)
    op = degradations.make(task.operator, channels=1, image_size=tuple(clean.shape[-2:]), seed=task.seed,
                           **task.params)
    scores, pictures = {}, None
    for start in range(0, len(clean), batch):
        x = clean[start:start + batch]
        y = measure(x, op, task.sigma_y_model, seed + start)
        with torch.inference_mode():
            for preview in solvers.nested(model, "ddrm", outer_steps=DIGIT_OUTER, inner_steps=DIGIT_INNER,
                                          samples=DIGIT_SAMPLES, generator=generator(seed + 1 + start), y=y, op=op,
                                          sigma_y=task.sigma_y_model):
                result = preview.estimate
                samples = image_psnr(result.samples.flatten(0, 1), x.repeat_interleave(DIGIT_SAMPLES, 0))
                scores.setdefault(preview.nfe, []).append((image_psnr(result.mean, x),
                                                           samples.reshape(len(x), DIGIT_SAMPLES)))
                if start == 0:
                    pictures = {"clean": x[0], "y": y[:1], "op": op, "samples": result.samples[0],
                                "mean": result.mean[0], "std": result.std[0], "nfe": preview.nfe}
    joined = {nfe: tuple(torch.cat(parts) for parts in zip(*chunks)) for nfe, chunks in scores.items()}
    return task, joined, pictures


def paired(differences):
    """Mean ± standard error of per-digit differences."""
    return differences.mean().item(), (differences.std() / math.sqrt(len(differences))).item()


def gain_table(results):
    """Mean of K at the last preview against the best single preview (sample 0; every sample) and against
    sample 0's best preview chosen per digit (an oracle)."""
    lines = [f"| task (σ_y model) | mean of {DIGIT_SAMPLES}, NFE {DIGIT_OUTER * DIGIT_INNER} | its best preview "
             "| sample 0, best preview | gain | any sample, best preview | gain "
             "| sample 0, best preview per digit (oracle) | gain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (task, scores) in results.items():
        final = max(scores)
        mean = scores[final][0]
        first = {nfe: s[1][:, 0] for nfe, s in scores.items()}
        every = {nfe: s[1].mean(1) for nfe, s in scores.items()}
        best_first = max(first, key=lambda nfe: first[nfe].mean())
        best_every = max(every, key=lambda nfe: every[nfe].mean())
        oracle = torch.stack(list(first.values())).amax(0)
        best_mean = max(scores, key=lambda nfe: scores[nfe][0].mean())
        cells = [f"{mean.mean():.2f}", f"{scores[best_mean][0].mean():.2f} (NFE {best_mean})"]
        for single, label in ((first[best_first], f" (NFE {best_first})"), (every[best_every], f" (NFE {best_every})"),
                              (oracle, "")):
            gain, error = paired(mean - single)
            mark = "" if label == "" else (" ✓" if gain >= GAIN_TARGET_DB else " ✗")
            cells += [f"{single.mean():.2f}{label}", f"{gain:+.2f} ± {error:.2f}{mark}"]
        lines.append(f"| {name} ({task.sigma_y_model:g}) | " + " | ".join(cells) + " |")
    return lines


def curve_table(results):
    nfes = sorted(next(iter(results.values()))[1])
    lines = ["| task | PSNR (dB) | " + " | ".join(f"NFE {nfe}" for nfe in nfes) + " |",
             "|---|---|" + "---:|" * len(nfes)]
    for name, (_, scores) in results.items():
        rows = {"sample 0": [scores[n][1][:, 0].mean() for n in nfes],
                "one sample (mean over 8)": [scores[n][1].mean() for n in nfes],
                f"**mean of {DIGIT_SAMPLES}**": [scores[n][0].mean() for n in nfes]}
        for label, values in rows.items():
            lines.append(f"| {name} | {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return lines


def curve_plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), dpi=110)
    for ax, (name, (_, scores)) in zip(axes, results.items()):
        nfes = sorted(scores)
        ax.plot(nfes, [scores[n][1].mean() for n in nfes], "o-", label="one sample")
        ax.plot(nfes, [scores[n][0].mean() for n in nfes], "s-", label=f"mean of {DIGIT_SAMPLES} samples")
        ax.set_title(f"embedded MNIST, {name}")
        ax.set_xlabel("NFE (nested DDRM 4 × 5)")
        ax.set_xticks(nfes)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# ------------------------------------------------------------------------------- d. pictures
def digit_picture(pictures):
    rows = []
    for name, p in pictures.items():
        shown = from_model(p["samples"][:4])
        rows.append([(f"{name}: clean", from_model(p["clean"])), ("measurement", measurement_picture(p["y"], p["op"])),
                     *[(f"sample {k + 1}", image) for k, image in enumerate(shown)],
                     (f"mean of {DIGIT_SAMPLES}", from_model(p["mean"])),
                     ("", std_picture(std_from_model(p["std"]), f"std of {DIGIT_SAMPLES}"))])
    return labelled_grid(rows)


def patch_picture(pictures):
    rows = []
    for name, p in pictures.items():
        estimate = solvers.estimate(p["ddrm"][None])
        rows.append([(f"{name}: measurement", measurement_picture(p["y"], p["op"])),
                     *[(f"DDRM {BUDGETS[-1]}: sample {k + 1}", from_model(x)) for k, x in enumerate(p["ddrm"][:3])],
                     (f"DDRM: mean of {DRAWS}", from_model(estimate.mean[0])),
                     ("", std_picture(std_from_model(estimate.std[0]), f"DDRM: std of {DRAWS}"))])
        rows.append([("clean", from_model(p["clean"])),
                     *[(f"exact: sample {k + 1}", from_model(x)) for k, x in enumerate(p["exact"][:3])],
                     ("exact posterior mean", from_model(p["exact mean"])),
                     ("", std_picture(std_from_model(p["exact std"]), "exact posterior std"))])
    return labelled_grid(rows)


# ------------------------------------------------------------------------------- report
def report(benchmarks, digits, command, sizes):
    lines = ["# Posterior mean and std from K samples", "",
             f"Command: `{command}` ({sizes}).", "",
             "Issue 20: `solvers.sample_estimate` / `solvers.nested(..., samples=K)` return the mean and per-pixel "
             "std of K draws per measurement (`solvers.estimate`). Here they are checked against the exact "
             "posterior of Gaussian-mixture priors, and the mean's PSNR gain is measured on the embedded model.",
             "", "## a. Against the exact posterior (Gaussian-mixture priors)", "",
             "Each mixture *is* the diffusion model, so E[x₀ | y] and Cov[x₀ | y] are exact. σ_y (model units): "
             + ", ".join(f"{t} {s}" for t, s in MIXTURE_TASKS.items()) + ". Solvers with bench_solvers' options "
             "(DDRM η = 0.85, η_b = 1; DDNM η = 0.85; ΠGDM η = 1; DPS restore's per-task step) "
             "and DDRM with η = 1; "
             "plain runs on "
             "DDRM's grid for each budget; nested DDRM: one run of 10 + 10 + 10 + 70 calls, its previews. "
             f"{DRAWS} draws per image; the mean of K is scored on each of the {DRAWS} / K disjoint groups.", "",
             "**Mean**: MSE(mean of K) / (MMSE · (1 + 1/K)), MSE in model units over images and groups, MMSE the "
             "exact posterior mean's MSE on the same images (± standard error over images, delta method). Exact "
             "posterior draws give 1 + noise (row *exact draws*); a sampler whose draws are too alike (η < 1) "
             "scores below 1 at K = 1 and its bias shows as K grows. Target: ≤ 1.10 at 100 calls for DDRM "
             "and DDNM, at every K.", "",
             "**Std**: *var. ratio* = mean std² / mean exact variance with K = 16 at each budget (1 for exact "
             "draws: the K − 1 variance is unbiased); *rel. error* = mean |std − exact std| / exact std per pixel "
             f"at {BUDGETS[-1]} calls (includes the Monte-Carlo error of K draws: compare with *exact draws*); "
             f"*corr.* = correlation of the std map with the exact one per image, K = {DRAWS}, {BUDGETS[-1]} calls.",
             ""]
    for title, results, _ in benchmarks:
        by_count, by_budget = ratio_tables(results)
        lines += [f"### {title}", "", f"Mean, at {BUDGETS[-1]} calls:", "", *by_count, "",
                  "Mean, by budget (ratio at K = 1 / K = 16):", "", *by_budget, "", "Std:", "", *std_table(results), ""]
    digit_results, count = digits
    lines += ["## b. Mean of K against the best single preview (embedded model)", "",
              f"Held-out digits `mnist32('test')[:{count}]`, tasks as the packaged task files define them (deno: "
              "σ_y = 1.0 pixel = 2.0 model units; sr4 and inp noiseless), nested DDRM "
              f"{DIGIT_OUTER} outer × {DIGIT_INNER} inner with samples={DIGIT_SAMPLES}. PSNR (dB, [0, 1]) "
              "mean over digits; gain = mean of K at the last preview minus the single preview, mean ± standard "
              "error of the per-digit difference. *Best preview*: the NFE whose previews score best on average "
              f"(of sample 0; of all {DIGIT_SAMPLES} samples). Target: gain ≥ {GAIN_TARGET_DB} dB (✓).", "",
              *gain_table(digit_results), "",
              "## c. The anytime curve", "", "In [anytime_schedule.md](anytime_schedule.md#posterior-mean-along-"
              "the-previews) (the same runs).", "",
              "## d. Pictures", "", "![mean, std and samples of digits](images/posterior_digit.png)", "",
              f"Nested DDRM {DIGIT_OUTER} × {DIGIT_INNER}, {DIGIT_SAMPLES} samples, the first held-out digit "
              "(std in [0, 1] pixel units).", "",
              "![mean, std and samples of a photo patch](images/posterior_patch.png)", "",
              f"Per task: DDRM with {BUDGETS[-1]} calls ({DRAWS} draws) above the exact posterior (its draws, mean "
              "and std) for the first held-out photo patch; every std map has its own colour scale (its bar).", ""]
    return "\n".join(lines)


def curve_block(digits):
    results, count = digits
    return "\n".join([
        CURVE_BEGIN, "", "### Posterior mean along the previews", "",
        "`scripts/bench_posterior.py` ([posterior_estimates.md](posterior_estimates.md)): "
        f"nested DDRM {DIGIT_OUTER} × {DIGIT_INNER} with "
        f"samples={DIGIT_SAMPLES} on the embedded model, `mnist32('test')[:{count}]`, tasks as the packaged task "
        f"files; PSNR (dB) of one sample and of the mean of the {DIGIT_SAMPLES} samples at every preview.", "",
        *curve_table(results), "", "![mean of K against one sample along the previews](images/posterior_anytime.png)",
        "", CURVE_END])


def write_curve(path, block):
    text = path.read_text()
    if CURVE_BEGIN in text:
        before, rest = text.split(CURVE_BEGIN, 1)
        text = before + block + rest.split(CURVE_END, 1)[1]
    else:
        before, after = text.split(CURVE_BEFORE, 1)
        text = before + block + "\n\n" + CURVE_BEFORE + after
    path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, help="held-out images per exact-mixture benchmark (default 64)")
    parser.add_argument("--images", type=int, help="held-out digits, embedded model (default 64)")
    parser.add_argument("--components", type=int, default=10, help="mixture components")
    parser.add_argument("--em-iterations", type=int, default=20, help="EM iterations of the mixture fits")
    parser.add_argument("--batch", type=int, default=32, help="digits per nested run (× 8 samples a batch)")
    parser.add_argument("--quick", action="store_true",
                        help="8 patches and 4 digits, print only (docs and pictures are left as they are)")
    args = parser.parse_args()
    if args.quick and (args.patches, args.images) != (None, None):
        parser.error("--quick sets --patches 8 and --images 4: give either --quick or the sizes")
    if args.quick:
        args.patches, args.images = 8, 4
    args.patches = 64 if args.patches is None else args.patches
    args.images = 64 if args.images is None else args.images
    if min(args.patches, args.images, args.components, args.em_iterations, args.batch) < 1:
        parser.error("--patches, --images, --components, --em-iterations and --batch must be at least 1")
    torch.set_num_threads(1)
    start = time.time()
    benchmarks = mixture_benchmarks(args)
    model = load_model("embedded")
    clean = to_model(torch.from_numpy(mnist32("test")[:args.images]))
    digit_results, digit_pictures = {}, {}
    for name, reference in DIGIT_TASKS.items():
        task, scores, digit_pictures[name] = digit_task(model, clean, reference, args.batch)
        digit_results[name] = (task, scores)
        print(f"  embedded {name}: {time.time() - start:.0f} s", file=sys.stderr)
    digits = (digit_results, len(clean))
    sizes = (f"{args.patches} held-out images per mixture, {len(clean)} digits, {args.components} components, "
             f"{args.em_iterations} EM iterations; {time.time() - start:.0f} s on one thread")
    command = ("python scripts/bench_posterior.py " + " ".join(sys.argv[1:])).strip()
    text = report(benchmarks, digits, command, sizes)
    print(text)
    print(curve_block(digits))
    if args.quick:
        return
    out = ROOT / "docs" / "posterior_estimates.md"
    out.write_text(text + "\n" + READING_MARKER + kept_reading(out))
    write_curve(ROOT / "docs" / "anytime_schedule.md", curve_block(digits))
    curve_plot(digit_results, IMAGES / "posterior_anytime.png")
    save_picture(digit_picture(digit_pictures), IMAGES / "posterior_digit.png")
    save_picture(patch_picture(benchmarks[0][2]), IMAGES / "posterior_patch.png")


if __name__ == "__main__":
    main()
