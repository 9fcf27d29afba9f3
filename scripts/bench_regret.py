"""Regret of anytime Nested DDRM against plain DDRM that knew the budget, on exact Gaussian-mixture priors.

regret(k) = quality of plain DDRM run with exactly k calls − quality of the nested preview after k calls,
at every preview, for every task. Quality: PSNR (dB, per image, mean over images and seeds; 95 % interval
of the paired difference) and FD, the Fréchet distance (pixel space) between the set of outputs and a set
of exact posterior samples for the same measurements — the mixture benchmark's FID (regret in %, 95 %
bootstrap interval over images × seeds). Priors as in bench_anytime.py (MNIST 1×8×8, photo patches 3×6×6).

Usage: python scripts/bench_regret.py [--images 500] [--seeds 3] [--variants paper,default] [--plot PNG]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import degradations  # noqa: E402
import solvers  # noqa: E402
from bench_anytime import mnist_digits, photo_patches  # noqa: E402
from ipsolve.models import GaussianMixturePrior  # noqa: E402
from ipsolve.models.schedules import alphas_cumprod_from_betas  # noqa: E402
from solvers.common import alpha_bar  # noqa: E402
from solvers.ddrm import SpectralMeasurement, _step  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / "runs" / "bench_regret_cache"
SIGMA_Y = {"deno": 0.4, "sr4": 0.1, "sr2": 0.1, "inp": 0.1, "color": 0.1}  # model units
DATASETS = {"mnist": ("MNIST 1x8x8", ("deno", "sr4", "inp")),
            "photo": ("photo patches 3x6x6", ("deno", "sr2", "inp", "color"))}


# ------------------------------------------------------------------------------------------------ plans
def plain_grid(k: int) -> list[int]:
    """Plain DDRM with exactly k calls: DDRM's grid (skip = 1000 // k) cut to its last k points."""
    return solvers.ddrm_timesteps(k)[-k:]


def paper_plan(counts):
    """Today's schedule: outer times evenly spaced from DDRM's top for the total, inner linspace on [0, t]."""
    total = sum(counts)
    outer = solvers.outer_timesteps(len(counts), solvers.ddrm_timesteps(total)[0])
    return [solvers.inner_timesteps(t, k) for t, k in zip(outer, counts)]


def tail_plan(counts):
    """Inner run j = the last k_j points of plain DDRM's grid for K_j = k_1 + … + k_j calls."""
    return [plain_grid(total)[-k:] for k, total in zip(counts, itertools.accumulate(counts))]


def first_plain_then_linear(counts):
    """First run plain DDRM with k_1 calls; later outer times evenly spaced from its top, linspace inner."""
    top = plain_grid(counts[0])[0]
    outer = solvers.outer_timesteps(len(counts), top)
    return [plain_grid(counts[0])] + [solvers.inner_timesteps(t, k) for t, k in zip(outer[1:], counts[1:])]


def scaled_tail_plan(scale):
    """As tail_plan, later outer times multiplied by `scale` (inner runs linspace on [0, t])."""
    def plan(counts):
        grids = tail_plan(counts)
        out = [grids[0]]
        for grid, k in zip(grids[1:], counts[1:]):
            t = min(999, max(k - 1, round(grid[0] * scale)))
            out.append(solvers.inner_timesteps(t, k))
        return out
    return plan


# --------------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    plan: object  # counts → inner grids
    outer: str = "ddim"  # "ddim" | "ddrm" (y-aware, DDRM's spectral step)
    eta_outer: float = 0.0
    eta_b_outer: float = 1.0
    inner_eta: object = 0.85  # float or callable(step, steps) → η
    counts: object = None  # callable(S, I) → counts (default uniform)
    library: dict | None = None  # when set: run solvers.nested(**library) instead (the library's schedules)


VARIANTS = {
    "default": Variant(None, library={}),  # solvers.nested as it is now, default options
    "paper": Variant(None, library={"schedule": "paper"}),
    "paper (bench)": Variant(paper_plan),
    "first-plain": Variant(first_plain_then_linear),
    "tail": Variant(tail_plan),
    "tail-yaware": Variant(tail_plan, outer="ddrm"),
    "paper-yaware": Variant(paper_plan, outer="ddrm"),
    "tail x0.9": Variant(scaled_tail_plan(0.9)),
    "tail x0.8": Variant(scaled_tail_plan(0.8)),
    "tail x0.7": Variant(scaled_tail_plan(0.7)),
    "tail x1.25": Variant(scaled_tail_plan(1.25)),
    "tail x1.5": Variant(scaled_tail_plan(1.5)),
    "tail eta_o=0.5": Variant(tail_plan, eta_outer=0.5),
    "tail eta_o=1": Variant(tail_plan, eta_outer=1.0),
    "tail-yaware eta_o=0.85": Variant(tail_plan, outer="ddrm", eta_outer=0.85),
}


def run_variant(prior, y, op, sigma_y, variant: Variant, outer_steps, inner_steps, generator):
    """{nfe: preview x̂₀} of one nested run of `variant`."""
    if variant.library is not None:
        run = solvers.nested(prior, "ddrm", outer_steps=outer_steps, inner_steps=inner_steps, generator=generator,
                             y=y, op=op, sigma_y=sigma_y, **variant.library)
        return {preview.nfe: preview.x0 for preview in run}
    counts = variant.counts(outer_steps, inner_steps) if variant.counts else [inner_steps] * outer_steps
    grids = variant.plan(counts)
    meas = SpectralMeasurement(y, op, sigma_y)
    draw = solvers.common.noise_drawer(None, generator)
    x = solvers.ddrm_init(prior, y, op, sigma_y, grids[0][0], generator=generator)
    previews, nfe = {}, 0
    for step, grid in enumerate(grids):
        eta = variant.inner_eta(step, len(grids)) if callable(variant.inner_eta) else variant.inner_eta
        x0 = solvers.ddrm(prior, y, op, sigma_y, grid, eta=eta, x_T=x, generator=generator)
        nfe += len(grid)
        previews[nfe] = x0
        if step + 1 == len(grids):
            break
        t, t_next = grid[0], grids[step + 1][0]
        a, a_next = alpha_bar(prior, t, x), alpha_bar(prior, t_next, x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        if variant.outer == "ddim":
            x = solvers.common.ddim_step(x0, eps, a, a_next, variant.eta_outer, draw)
        else:
            sigma_next = ((1 - a_next) / a_next).sqrt()
            x_bar = _step(meas, op.Vt(x0), op.Vt(eps), sigma_next, variant.eta_outer, variant.eta_b_outer, draw)
            x = a_next.sqrt() * op.V(x_bar)
    return previews


# --------------------------------------------------------------------------------------------- metrics
def frechet(a, b):
    """Fréchet distance between Gaussians fitted to the rows of a and b (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    if len(a) + len(b) < a.shape[1]:  # low rank: Tr((Ca Cb)^½) is the nuclear norm of A Bᵀ (as metrics.fid_from_features)
        left = (a - mu_a) / math.sqrt(len(a) - 1)
        right = (b - mu_b) / math.sqrt(len(b) - 1)
        cross = torch.linalg.svdvals(left @ right.T).sum()
        return ((mu_a - mu_b).square().sum() + left.square().sum() + right.square().sum() - 2 * cross).item()
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(ca)
    root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root @ cb @ root).clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + ca.trace() + cb.trace() - 2 * cross).item()


def ci(values):
    """(mean, 95 % half-width) of a 1-D tensor."""
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(len(values))


def fd_regret(ours, plain, reference, rounds, generator):
    """FD(ours)/FD(plain) − 1 in %, with a 95 % bootstrap interval over the rows (paired)."""
    point = 100 * (frechet(ours, reference) / frechet(plain, reference) - 1)
    boots = []
    for _ in range(rounds):
        rows = torch.randint(len(ours), (len(ours),), generator=generator)
        boots.append(100 * (frechet(ours[rows], reference[rows]) / frechet(plain[rows], reference[rows]) - 1))
    boots = torch.tensor(boots)
    return point, boots.quantile(0.025).item(), boots.quantile(0.975).item()


# ------------------------------------------------------------------------------------------------ setup
def load_prior(key, components):
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{key}-{components}.pt"
    alphas_cumprod = alphas_cumprod_from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    if key == "mnist":
        train, test = mnist_digits("train"), mnist_digits("test")
    else:
        train, test = photo_patches()
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        prior = GaussianMixturePrior(saved["weights"], saved["means"], saved["covariances"], alphas_cumprod,
                                     tuple(train.shape[1:]))
    else:
        prior = GaussianMixturePrior.fit(train, components, alphas_cumprod, iterations=100,
                                         generator=torch.Generator().manual_seed(0))
        torch.save({"weights": prior.weights, "means": prior.means, "covariances": prior.covariances}, path)
    return prior, test


def measure(prior, clean, task, seed):
    channels, height, width = clean.shape[1:]
    op = degradations.make(task, channels=channels, image_size=(height, width), seed=0)
    g = torch.Generator().manual_seed(1000 + seed)
    measured = op.H(clean)
    y = measured + SIGMA_Y[task] * torch.randn(measured.shape, generator=g, dtype=measured.dtype)
    references = prior.posterior(y, op, SIGMA_Y[task]).sample(2, generator=g)
    return op, y, references


def collect(prior, clean, task, seeds, variants, split):
    """Per variant: {nfe: (outputs over images × seeds)}; plus plain DDRM at every needed k and the reference."""
    outer_steps, inner_steps = split
    outputs = {name: {} for name in variants}
    plain, references = {}, []
    for seed in range(seeds):
        op, y, reference = measure(prior, clean, task, seed)
        references.append(reference.transpose(0, 1))
        for name, variant in variants.items():
            previews = run_variant(prior, y, op, SIGMA_Y[task], variant, outer_steps, inner_steps,
                                   torch.Generator().manual_seed(seed))
            for nfe, x0 in previews.items():
                outputs[name].setdefault(nfe, []).append(x0)
        for nfe in sorted({n for o in outputs.values() for n in o} - {n for n in plain if len(plain[n]) > seed}):
            x0 = solvers.ddrm(prior, y, op, SIGMA_Y[task], plain_grid(nfe), generator=torch.Generator().manual_seed(seed))
            plain.setdefault(nfe, []).append(x0)
    cat = lambda d: {k: torch.cat(v) for k, v in d.items()}  # noqa: E731
    references = torch.cat(references)  # (images × seeds, 2, C, H, W): two exact posterior draws each
    return {name: cat(o) for name, o in outputs.items()}, cat(plain), references[:, 0], references[:, 1]


def regret_rows(outputs, plain, clean, reference, rounds, generator, score):
    """One row per (variant, preview): PSNR and FD regret with 95 % intervals (see the module doc)."""
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    rows = []
    for name, previews in outputs.items():
        for nfe, x0 in sorted(previews.items()):
            gap, half = ci(score(plain[nfe]) - score(x0))
            fd, lo, hi = fd_regret(flat(x0), flat(plain[nfe]), flat(reference), rounds, generator)
            rows.append({"variant": name, "nfe": nfe, "psnr": score(x0).mean().item(),
                         "psnr_plain": score(plain[nfe]).mean().item(), "psnr_regret": gap, "psnr_half": half,
                         "fd": frechet(flat(x0), flat(reference)), "fd_plain": frechet(flat(plain[nfe]), flat(reference)),
                         "fd_regret": fd, "fd_lo": lo, "fd_hi": hi})
    return rows


def capped_psnr(x, clean):
    """PSNR (dB) on [0, 1] after clamping, capped at 60 dB (saturated patches can be restored exactly)."""
    mse = (((x + 1) / 2).clamp(0, 1) - ((clean + 1) / 2).clamp(0, 1)).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-6))


def mixture_task(prior, clean, task, seeds, variants, split, rounds):
    outputs, plain, reference, second = collect(prior, clean, task, seeds, variants, split)
    clean_all = clean.repeat(seeds, 1, 1, 1)
    score = lambda x: capped_psnr(x, clean_all)  # noqa: E731
    rows = regret_rows(outputs, plain, clean_all, reference, rounds, torch.Generator().manual_seed(7), score)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    floor = {"psnr": score(second).mean().item(), "fd": frechet(flat(second), flat(reference))}
    return rows, floor


# ----------------------------------------------------------------------------------------- embedded model
EMBEDDED_TASKS = ("deno", "sr4", "inp")
EMBEDDED_VARIANTS = {  # solvers.nested options for a 3x10 run
    "default": {}, "paper": {"schedule": "paper"},
    "tail x0.9": {"outer_timesteps": [g[0] for g in solvers.matched_inner_timesteps([10] * 3, reach=0.9)]},
}  # configs/tasks: deno σ_y 1.0 pixel (2.0 model units), sr4 and inp noiseless


def embedded_task(model, digits, task_name, seeds, schedules, split, rounds, batch=50):
    """The embedded MNIST model on held-out digits: plain DDRM (exactly k calls) against nested previews,
    PSNR regret and the Fréchet distance in pixel space to the clean digits (FID's stand-in: Inception
    features cost ~1 s an image on a CPU)."""
    from ipsolve.config import load_task

    task = load_task(task_name, Path(__file__).resolve().parents[1] / "configs" / "tasks")
    op = degradations.make(task.operator, channels=1, image_size=tuple(digits.shape[-2:]), seed=task.seed,
                           **task.params)
    sigma_y = task.sigma_y_model
    outer_steps, inner_steps = split
    outputs = {name: {} for name in schedules}
    plain = {}
    x = 2 * digits - 1
    with torch.inference_mode():
        for seed, _, y in noisy_batches(x, op, sigma_y, seeds, batch):
            marks = set()
            for name, options in schedules.items():
                run = solvers.nested(model, "ddrm", outer_steps=outer_steps, inner_steps=inner_steps,
                                     generator=torch.Generator().manual_seed(seed), y=y, op=op,
                                     sigma_y=sigma_y, **options)
                for preview in run:
                    outputs[name].setdefault(preview.nfe, []).append(preview.x0)
                    marks.add(preview.nfe)
            for nfe in sorted(marks):
                x0 = solvers.ddrm(model, y, op, sigma_y, solvers.plain_ddrm_timesteps(nfe),
                                  generator=torch.Generator().manual_seed(seed))
                plain.setdefault(nfe, []).append(x0)
    cat = lambda d: {k: torch.cat(v) for k, v in d.items()}  # noqa: E731
    outputs, plain = {n: cat(o) for n, o in outputs.items()}, cat(plain)
    clean_all = x.repeat(seeds, 1, 1, 1)
    score = lambda out: capped_psnr(out, clean_all)  # noqa: E731
    return regret_rows(outputs, plain, clean_all, clean_all, rounds, torch.Generator().manual_seed(7), score)


def noisy_batches(clean, op, sigma_y, seeds, batch):
    """(seed, clean batch, y) for every seed and batch of `clean`: y = H x + σ_y n with n drawn from the
    generator seeded 10000·seed + the batch's first index, so every schedule compared sees the same y."""
    for seed in range(seeds):
        for chunk in range(0, len(clean), batch):
            x = clean[chunk:chunk + batch]
            measured = op.H(x)
            g = torch.Generator().manual_seed(10_000 * seed + chunk)
            yield seed, x, measured + sigma_y * torch.randn(measured.shape, generator=g, dtype=measured.dtype)


# ------------------------------------------------------------------------------------------- budget check
def budget_check(model, clean, op, sigma_y, outer_steps, inner_steps, budget, seeds, batch=50, plain=True):
    """Mean PSNR (± 95 %) of every preview of a run with a budget below outer × inner: the old rule (the
    paper's grid for outer × inner calls, the last inner run cut to what is left) against the default (the
    budget shared over the runs that fit). {rule: [(nfe, mean, half)]}."""
    counts = [inner_steps] * outer_steps
    old_outer = solvers.outer_timesteps(outer_steps, solvers.ddrm_timesteps(sum(counts))[0])
    old_counts = solvers.cut_to_budget(counts, budget)
    rules = {"truncated (before)": dict(schedule="paper", outer_timesteps=old_outer[:len(old_counts)],
                                        inner_steps=old_counts),
             "planned (default)": dict(outer_steps=outer_steps, inner_steps=inner_steps, budget=budget)}
    scores = {rule: {} for rule in [*rules, "plain DDRM"]}
    with torch.inference_mode():
        for seed, x, y in noisy_batches(clean, op, sigma_y, seeds, batch):
            for rule, options in rules.items():
                run = solvers.nested(model, "ddrm", generator=torch.Generator().manual_seed(seed), y=y, op=op,
                                     sigma_y=sigma_y, **options)
                for preview in run:
                    scores[rule].setdefault(preview.nfe, []).append(capped_psnr(preview.x0, x))
            for nfe in scores["planned (default)"] if plain else ():
                x0 = solvers.ddrm(model, y, op, sigma_y, solvers.plain_ddrm_timesteps(nfe),
                                  generator=torch.Generator().manual_seed(seed))
                scores["plain DDRM"].setdefault(nfe, []).append(capped_psnr(x0, x))
    return {rule: [(nfe, *ci(torch.cat(v))) for nfe, v in sorted(by_nfe.items())] for rule, by_nfe in scores.items()
            if by_nfe}


def run_budget_checks(args):
    outer_steps, inner_steps, budget = (int(v) for v in args.budget_check.replace(":", "x").split("x"))
    for key in args.datasets.split(","):
        if key == "embedded":
            from ipsolve.config import load_task
            from ipsolve.datasets import mnist32
            from ipsolve.models import load_model

            model = load_model("embedded")
            clean = 2 * torch.from_numpy(mnist32("test")[:args.images]) - 1
            problems = []
            for name in (args.tasks.split(",") if args.tasks else EMBEDDED_TASKS):
                task = load_task(name, Path(__file__).resolve().parents[1] / "configs" / "tasks")
                op = degradations.make(task.operator, channels=1, image_size=(32, 32), seed=task.seed, **task.params)
                problems.append((f"embedded model, {name}", model, clean, op, task.sigma_y_model))
        else:
            title, tasks = DATASETS[key]
            prior, test = load_prior(key, args.components)
            clean = test[:args.images]
            problems = [(f"{title}, {name}", prior, clean,
                         degradations.make(name, channels=clean.shape[1], image_size=tuple(clean.shape[-2:]), seed=0),
                         SIGMA_Y[name]) for name in (args.tasks.split(",") if args.tasks else tasks)]
        for title, model, clean, op, sigma_y in problems:
            start = time.time()
            result = budget_check(model, clean, op, sigma_y, outer_steps, inner_steps, budget, args.seeds,
                                  plain=not args.no_plain)
            print(f"\n{title}: {outer_steps} outer x {inner_steps} inner, budget {budget}, {len(clean)} images x "
                  f"{args.seeds} seeds ({time.time() - start:.0f} s); PSNR of every preview (95 %)")
            for rule, rows in result.items():
                print(f"  {rule:20s}" + "".join(f"  NFE {nfe:2d}: {m:6.2f} ± {h:4.2f}" for nfe, m, h in rows))
            sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ output
def print_rows(title, rows, floor=None):
    print(f"\n{title}")
    print(f"{'variant':26s} {'NFE':>4s} {'PSNR':>7s} {'plain':>7s} {'regret dB (95%)':>17s} {'FD':>8s} {'plain':>8s} "
          f"{'FD regret % (95%)':>24s}")
    for r in rows:
        print(f"{r['variant']:26s} {r['nfe']:4d} {r['psnr']:7.2f} {r['psnr_plain']:7.2f} {r['psnr_regret']:+7.2f} ± "
              f"{r['psnr_half']:5.2f}  {r['fd']:8.4f} {r['fd_plain']:8.4f} {r['fd_regret']:+8.1f} "
              f"[{r['fd_lo']:+6.1f}, {r['fd_hi']:+6.1f}]")
    if floor:
        print(f"{'exact posterior sample':26s} {'':4s} {floor['psnr']:7.2f} {'':35s} {floor['fd']:8.4f}")
    sys.stdout.flush()


def markdown(results, variants):
    """The regret table in markdown: per benchmark / task / variant, 'PSNR regret ± 95 % / FD regret %' per preview."""
    lines = ["| benchmark | task | schedule | preview 1 | preview 2 | preview 3 |", "|---|---|---|---|---|---|"]
    for panel in results:
        for name in variants:
            rows = [r for r in panel["rows"] if r["variant"] == name]
            if rows:
                cells = [f"{r['nfe']}: {r['psnr_regret']:+.2f} ± {r['psnr_half']:.2f} dB, {r['fd_regret']:+.0f} % "
                         f"[{r['fd_lo']:+.0f}, {r['fd_hi']:+.0f}]" for r in rows]
                lines.append(f"| {panel['benchmark']} | {panel['task']} ({panel['split']}) | {name} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path, variants):
    """Regret curves: one column per (benchmark, task), PSNR regret on top, FD regret below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in results if r["split"] == "3x10"]
    fig, axes = plt.subplots(2, len(panels), figsize=(2.3 * len(panels), 4.6), squeeze=False, sharex=True)
    for column, panel in enumerate(panels):
        for name in variants:
            rows = [r for r in panel["rows"] if r["variant"] == name]
            if not rows:
                continue
            nfe = [r["nfe"] for r in rows]
            axes[0, column].errorbar(nfe, [r["psnr_regret"] for r in rows], [r["psnr_half"] for r in rows],
                                     marker="o", ms=3, capsize=2, label=name)
            axes[1, column].errorbar(nfe, [r["fd_regret"] for r in rows],
                                     [[max(0, r["fd_regret"] - r["fd_lo"]) for r in rows],
                                      [max(0, r["fd_hi"] - r["fd_regret"]) for r in rows]], marker="o", ms=3, capsize=2)
        for row, (limit, unit) in enumerate(((0.1, "dB"), (5, "%"))):
            ax = axes[row, column]
            ax.axhspan(-limit, limit, color="0.9")
            ax.axhline(0, color="0.5", lw=0.5)
            ax.tick_params(labelsize=7)
        axes[0, column].set_title(f"{panel['benchmark']}\n{panel['task']}", fontsize=8)
        axes[1, column].set_xlabel("NFE", fontsize=8)
    axes[0, 0].set_ylabel("PSNR regret (dB)", fontsize=8)
    axes[1, 0].set_ylabel("FD regret (%)", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("regret(k) = plain DDRM with k calls − nested preview at k (95 % intervals; grey: the goal)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--datasets", default="mnist,photo", help="mnist, photo and/or embedded")
    parser.add_argument("--tasks", default=None, help="comma list (default: every task of the dataset)")
    parser.add_argument("--splits", default="3x10", help="comma list of SxI")
    parser.add_argument("--variants", default="paper,default", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=200, help="bootstrap rounds for the FD interval")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="draw the regret curves of the results (or of --from-json)")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="only plot / print results saved by --json (a later file's panel replaces an earlier one's)")
    parser.add_argument("--budget-check", metavar="SxI:B",
                        help="instead: PSNR of every preview of S×I runs capped at B calls, truncated vs planned")
    parser.add_argument("--no-plain", action="store_true", help="budget check: skip the plain DDRM rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.budget_check:
        run_budget_checks(args)
        return
    names = args.variants.split(",")
    if args.from_json:
        panels = {}
        for path in args.from_json:
            for panel in json.loads(path.read_text()):
                panels[panel["benchmark"], panel["task"], panel["split"]] = panel
        results = list(panels.values())
        for panel in results:
            print_rows(panel["title"], panel["rows"], panel.get("floor"))
        print("\n" + markdown(results, names))
    else:
        results = run_benchmarks(args, names)
    if args.plot:
        plot(results, args.plot, names)


def run_benchmarks(args, names):
    variants = {name: VARIANTS[name] for name in names}
    splits = [tuple(int(v) for v in s.split("x")) for s in args.splits.split(",")]
    results = []
    for key in args.datasets.split(","):
        if key == "embedded":
            from ipsolve.datasets import mnist32
            from ipsolve.models import load_model

            model = load_model("embedded")
            digits = torch.from_numpy(mnist32("test")[:args.images])
            schedules = {name: EMBEDDED_VARIANTS[name] for name in names}
            tasks, title = EMBEDDED_TASKS, f"embedded model 1x32x32, {len(digits)} held-out digits"
        else:
            title, tasks = DATASETS[key]
            prior, test = load_prior(key, args.components)
            clean = test[:args.images]
        for task, split in itertools.product(args.tasks.split(",") if args.tasks else tasks, splits):
            if task not in tasks:
                continue
            start = time.time()
            if key == "embedded":
                rows, floor = embedded_task(model, digits, task, args.seeds, schedules, split, args.rounds), None
            else:
                rows, floor = mixture_task(prior, clean, task, args.seeds, variants, split, args.rounds)
            heading = (f"{title}, {task}, {split[0]}x{split[1]}, {args.seeds} seeds "
                       f"({time.time() - start:.0f} s)")
            print_rows(heading, rows, floor)
            results.append({"benchmark": title.split(",")[0], "task": task, "split": f"{split[0]}x{split[1]}",
                            "title": heading, "rows": rows, "floor": floor})
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
