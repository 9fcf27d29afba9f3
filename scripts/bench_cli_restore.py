"""What a new user gets: `ipsolve degrade` then `ipsolve restore` (as typed), per solver, on held-out digits.

For each task (deno, sr4, inp; σ_y as scripts/eval_embedded.py's, in pixel units here) it degrades held-out
digits `mnist32("test")[FIRST:FIRST+COUNT]` with `ipsolve degrade --seed i`, restores the folder once per
solver with `ipsolve restore DIR --solver S --outer O --inner I` (the solver's defaults otherwise), and
prints the mean PSNR (dB, [0, 1]) of the measurement's pseudo-inverse H⁺y and of each solver's final.png,
and their gain over the measurement. Every command runs in a subprocess, as a user runs it.

Usage: python scripts/bench_cli_restore.py [--count 16] [--first 250] [--outer 2] [--inner 10]
       [--solvers ddrm ddnm pigdm dps] [--work DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from eval_embedded import TASKS
from ipsolve.datasets import mnist32
from ipsolve.imageio import from_model, load_image, save_image
from ipsolve.measurement import read_measurement
from ipsolve.metrics import psnr


def ipsolve(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "ipsolve", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ipsolve {' '.join(map(str, args))}: {done.stderr.strip()}")


def degraded_folder(work: Path, task: str, digits, first: int) -> Path:
    """DIR of measurements `digit_{index}.png` (+ sidecars) of `task`, one seed per digit."""
    folder = work / f"{task}_measurements"
    folder.mkdir(parents=True)
    for offset, digit in enumerate(digits):
        clean = work / "clean" / f"digit_{first + offset}.png"
        if not clean.exists():
            clean.parent.mkdir(exist_ok=True)
            save_image(digit, clean)
        ipsolve("degrade", clean, "--task", task, "--sigma-y", TASKS[task] / 2, "--seed", first + offset,
                "-o", folder / clean.name)
    return folder


def mean_psnr(images, cleans) -> float:
    return psnr(torch.stack(images).clamp(0, 1), torch.stack(cleans)).mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--first", type=int, default=250, help="first held-out digit")
    parser.add_argument("--outer", type=int, default=2)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--solvers", nargs="+", default=["ddrm", "ddnm", "pigdm", "dps"])
    parser.add_argument("--work", type=Path, help="keep the folders here (default: a temporary folder)")
    args = parser.parse_args()
    digits = torch.from_numpy(mnist32("test")[args.first:args.first + args.count])
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cli_restore_"))
    print(f"`ipsolve restore DIR --outer {args.outer} --inner {args.inner} --solver S`, {len(digits)} held-out "
          f"digits mnist32('test')[{args.first}:{args.first + len(digits)}], mean PSNR (dB) and gain over H⁺y\n")
    print("| task (σ_y pixel) | measurement H⁺y | " + " | ".join(args.solvers) + " |")
    print("|---|---:|" + "---:|" * len(args.solvers))
    for task in TASKS:
        folder = degraded_folder(work, task, digits, args.first)
        names = sorted(p.name for p in folder.glob("digit_*.png") if not p.name.endswith(".mask.png"))
        cleans = [load_image(work / "clean" / name) for name in names]
        pinv = []
        for name in names:
            measured = read_measurement(folder / name)
            pinv.append(from_model(measured.op.H_pinv(measured.y)[0]))
        base = mean_psnr(pinv, cleans)
        cells = []
        for solver in args.solvers:
            out = work / f"{task}_{solver}"
            ipsolve("restore", folder, "--solver", solver, "--outer", args.outer, "--inner", args.inner,
                    "--quiet", "--out", out)
            finals = [load_image(out / Path(name).stem / "final.png") for name in names]
            score = mean_psnr(finals, cleans)
            cells.append(f"{score:.2f} ({score - base:+.2f})")
        print(f"| {task} ({TASKS[task] / 2}) | {base:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
