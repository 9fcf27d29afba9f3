"""ΠGDM's weights side by side: PSNR of plain ΠGDM at 10 / 20 / 30 / 100 calls, per weight, start and safeguard.

The three weights of `solvers.pigdm` ("code": the authors' released step, "paper": Algorithm 1 as printed,
"score": the score-space step), each with and without the step safeguard, from pure noise or from the
released code's measurement-aware start (`solvers.pigdm_init`), next to DDRM with as many calls. Held-out
digits of the embedded MNIST 32×32 model (deno, sr4, inp; σ_y as scripts/eval_embedded.py's), in two
disjoint splits: the validation split chooses the default, the test split reports it. With --patches, the
same on photo patches 3×8×8 whose diffusion model is an exact Gaussian mixture, next to the exact
posterior mean and an exact posterior sample (bench_solvers' setting): where ΠGDM trails DDRM there too,
the gap belongs to the method, whose Gaussian approximation of p(x₀|x_t) is the only thing left inexact.

PSNR (dB, on [0, 1] after clamping) is the mean over images of one sample per image; a diverged run (x̂₀
not finite or beyond 1e4) is reported as such.

Variants: every combination of --weights, --etas, --starts and --safeguards (default: the three weights,
η = 1, the measurement-aware start, safeguard on and off).

Usage: python scripts/bench_pigdm.py [--images 16] [--budgets 10 20 30 100] [--splits validation test]
       [--patches 0] [--weights …] [--etas …] [--starts …] [--safeguards …] [--out FILE]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

import degradations
import solvers
from bench_anytime import photo_patches
from bench_solvers import PATCH_TASKS, Diverged, image_psnr, measure, watching
from eval_embedded import TASKS as DIGIT_TASKS
from ipsolve.datasets import mnist32
from ipsolve.imageio import to_model
from ipsolve.models import GaussianMixturePrior, load_model
from ipsolve.models.schedules import alphas_cumprod_from_betas



def run_psnr(model, clean, y, op, sigma_y, nfe, seed, solver="pigdm", **options):
    """Mean PSNR of one plain run of `nfe` calls on DDRM's grid, or None when it diverged."""
    grid = solvers.plain_ddrm_timesteps(nfe, len(model.alphas_cumprod))
    try:
        x = getattr(solvers, solver)(model, y, op, sigma_y, grid, callback=watching([]),
                                     generator=torch.Generator().manual_seed(seed), **options)
    except Diverged:
        return None
    return image_psnr(x, clean).mean().item()


def split_rows(model, clean, tasks, budgets, seed, variants, exact=None):
    """{task: {label: {nfe: PSNR or None}}} for every ΠGDM variant (weight, η, start, safeguard), DDRM, and
    (exact prior) the bounds."""
    table = {}
    for task, sigma_y in tasks.items():
        start_time = time.time()
        channels, height, width = clean.shape[1:]
        op = degradations.make(task, channels=channels, image_size=(height, width), seed=seed)
        y = measure(clean, op, sigma_y, seed)
        rows = {"ddrm": {n: run_psnr(model, clean, y, op, sigma_y, n, seed + 1, "ddrm") for n in budgets}}
        with torch.no_grad():
            for weight, eta, start, safeguard in variants:
                label = f"pigdm {weight}, η {eta}, {start} start, safeguard {'on' if safeguard else 'off'}"
                rows[label] = {n: run_psnr(model, clean, y, op, sigma_y, n, seed + 1, weight=weight, eta=eta,
                                           start=start, safeguard=safeguard) for n in budgets}
        if exact is not None:
            posterior = exact.posterior(y, op, sigma_y)
            mean = image_psnr(posterior.mean.reshape(clean.shape), clean).mean().item()
            sample = posterior.sample(1, generator=torch.Generator().manual_seed(seed))[0]
            rows["exact posterior mean"] = {n: mean for n in budgets}
            rows["exact posterior sample"] = {n: image_psnr(sample, clean).mean().item() for n in budgets}
        table[task] = rows
        print(f"  {task}: {time.time() - start_time:.0f} s", file=sys.stderr)
    return table


def markdown(title, tasks, table, budgets):
    lines = [f"### {title}", "", "| task (σ_y) | run | " + " | ".join(f"NFE {n}" for n in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    for task, rows in table.items():
        for label, row in rows.items():
            cells = ["diverged" if row[n] is None else f"{row[n]:.2f}" for n in budgets]
            lines.append(f"| {task} ({tasks[task]}) | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="held-out digits per split")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 30, 100])
    parser.add_argument("--seed", type=int, default=0, help="measurement seed (sampler: seed + 1)")
    parser.add_argument("--patches", type=int, default=0, help="held-out photo patches (0: skip the setting)")
    parser.add_argument("--splits", nargs="+", choices=("validation", "test"), default=["validation", "test"])
    parser.add_argument("--weights", nargs="+", choices=solvers.PIGDM_WEIGHTS, default=list(solvers.PIGDM_WEIGHTS))
    parser.add_argument("--etas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--starts", nargs="+", choices=solvers.PIGDM_STARTS, default=["measurement"])
    parser.add_argument("--safeguards", nargs="+", choices=("on", "off"), default=["on", "off"])
    parser.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = list(itertools.product(args.weights, args.etas, args.starts, [s == "on" for s in args.safeguards]))
    digits = to_model(torch.from_numpy(mnist32("test")))
    model = load_model("embedded")
    lines = []
    for name in args.splits:
        first = 0 if name == "validation" else 250  # disjoint splits of the 500 held-out digits
        part = digits[first:first + args.images]
        table = split_rows(model, part, DIGIT_TASKS, args.budgets, args.seed, variants)
        lines += markdown(f"embedded MNIST, {name} split: mnist32('test')[{first}:{first + len(part)}]",
                          DIGIT_TASKS, table, args.budgets)
    if args.patches:
        alphas_cumprod = alphas_cumprod_from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
        train, test = photo_patches(patch=8)
        prior = GaussianMixturePrior.fit(train, 10, alphas_cumprod, iterations=20,
                                         generator=torch.Generator().manual_seed(0))
        clean = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:args.patches]]
        table = split_rows(prior, clean, PATCH_TASKS, args.budgets, args.seed, variants, exact=prior)
        lines += markdown(f"photo patches 3×8×8, exact 10-component mixture, {len(clean)} held-out patches",
                          PATCH_TASKS, table, args.budgets)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
