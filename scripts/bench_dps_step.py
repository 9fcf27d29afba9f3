"""DPS step parametrisations side by side: PSNR of plain DPS at 10, 20, 30 and 100 calls on held-out digits.

The embedded MNIST 32×32 model and the digit tasks of `bench_solvers` (deno σ_y 0.2, sr4 0.05, inp 0.05;
model units), one plain run per budget on the grid `ipsolve restore --vanilla` uses, its final answer.
Two disjoint splits of `mnist32("test")` (digits the model never saw): validation = [VALIDATION_START,
VALIDATION_START + images), on which the per-task defaults were chosen, and test = [0, images), the digits
`bench_solvers` reports on. Each row is a (schedule, ζ, clip) setting; "measurement" is the PSNR of H⁺y.
A row's "mean" is its mean over the budgets: the per-task default is the "beta" row with the best mean on
the validation split. PSNR on [0, 1] images, mean over images; a diverged run (x̂₀ not finite) prints "div".

--restore: instead, what `ipsolve restore --solver dps` gives with its defaults (nested, 4 outer × 5 inner,
restore's per-task DPS options, seed 0), its final against the measurement H⁺y, and the same with --vanilla.

Usage: python scripts/bench_dps_step.py [--images 8] [--seed 0] [--budgets 10 20 30 100]
       [--splits validation test] [--tasks deno sr4 inp] [--settings constant:1:clip beta:0.1:clip ...] [--restore]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import degradations
import solvers
from eval_embedded import TASKS
from ipsolve.datasets import mnist32
from ipsolve.imageio import from_model, to_model
from ipsolve.metrics import psnr
from ipsolve.models import load_model
from ipsolve.restore import restore_batch

VALIDATION_START = 100
SETTINGS = ("constant:1:clip", "constant:1:noclip", "constant:3:clip", "constant:10:clip", "beta:0.05:clip",
            "beta:0.1:clip", "beta:0.2:clip", "beta:0.3:clip", "beta:0.4:clip", "beta:0.8:clip", "beta:0.1:noclip")


def split_images(split: str, images: int) -> torch.Tensor:
    start = VALIDATION_START if split == "validation" else 0
    return to_model(torch.from_numpy(mnist32("test")[start:start + images]))


def setting_options(setting: str) -> dict:
    """"beta:0.1:clip" → dps keywords."""
    schedule, zeta, clip = setting.split(":")
    return {"step_schedule": schedule, "step_size": float(zeta), "clip_x0": clip == "clip"}


def mean_psnr(x, clean) -> float:
    if not torch.isfinite(x).all():
        return math.nan
    return psnr(from_model(x), from_model(clean)).float().mean().item()


def task_rows(model, clean, task, settings, budgets, seed):
    """{row label: [PSNR per budget]}: the measurement's H⁺y, then one row per setting."""
    op = degradations.make(task, channels=1, image_size=(32, 32), seed=seed)
    clean_y = op.H(clean)
    y = clean_y + TASKS[task] * torch.randn(clean_y.shape, generator=torch.Generator().manual_seed(seed))
    rows = {"measurement H⁺y": [mean_psnr(op.H_pinv(y).reshape(clean.shape), clean)] * len(budgets)}
    for setting in settings:
        rows[setting] = [mean_psnr(solvers.dps(model, y, op, solvers.plain_ddrm_timesteps(nfe, 1000),
                                               generator=torch.Generator().manual_seed(seed + 1),
                                               **setting_options(setting)), clean) for nfe in budgets]
    return rows


def restore_rows(model, clean, task, seed):
    """{row label: [PSNR]}: H⁺y, and the final of `ipsolve restore --solver dps` with its defaults, nested and
    --vanilla (restore_batch with every option None, 4 outer × 5 inner, the command's seed 0)."""
    op = degradations.make(task, channels=1, image_size=(32, 32), seed=seed)
    clean_y = op.H(clean)
    y = clean_y + TASKS[task] * torch.randn(clean_y.shape, generator=torch.Generator().manual_seed(seed))
    rows = {"measurement H⁺y": [mean_psnr(op.H_pinv(y).reshape(clean.shape), clean)]}
    for vanilla in (False, True):
        previews = restore_batch(y, op, TASKS[task], model, 4, 5, solver="dps", vanilla=vanilla,
                                 generator=torch.Generator().manual_seed(0))
        rows["ipsolve restore --solver dps" + (" --vanilla" if vanilla else "")] = [mean_psnr(previews[-1].x0, clean)]
    return rows


def table(rows, budgets) -> list[str]:
    lines = ["| setting | " + " | ".join(f"NFE {b}" for b in budgets) + " | mean |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for label, values in rows.items():
        cells = ["div" if math.isnan(v) else f"{v:.2f}" for v in values + [sum(values) / len(values)]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def best_beta(rows) -> str:
    betas = {label: sum(v) / len(v) for label, v in rows.items() if label.startswith("beta:")
             and not any(math.isnan(x) for x in v)}
    return max(betas, key=betas.get) if betas else "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 30, 100])
    parser.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="schedule:ζ:clip|noclip")
    parser.add_argument("--restore", action="store_true", help="ipsolve restore's DPS defaults (20 NFE) instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("embedded")
    print(f"Command: `python scripts/bench_dps_step.py {' '.join(sys.argv[1:])}`")
    with torch.no_grad():
        for split in args.splits:
            clean = split_images(split, args.images)
            for task in args.tasks:
                start = time.time()
                if args.restore:
                    rows, budgets = restore_rows(model, clean, task, args.seed), [20]
                else:
                    rows, budgets = task_rows(model, clean, task, args.settings, args.budgets, args.seed), args.budgets
                print(f"\n### {split}: {task} (σ_y {TASKS[task]}), {args.images} digits, seed {args.seed} "
                      f"({time.time() - start:.0f} s)\n")
                print("\n".join(table(rows, budgets)))
                if not args.restore:
                    print(f"\nbest beta row by mean: {best_beta(rows)}", flush=True)


if __name__ == "__main__":
    main()
