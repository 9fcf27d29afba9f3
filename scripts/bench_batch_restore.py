"""Batch restore of held-out digits on 1 and 2 processes: wall time, images/s, identical outputs.

    python scripts/bench_batch_restore.py [--count 200] [--task sr4] [--sigma-y 0.025] [--outer 4 --inner 5]

Degrades `count` held-out digits (ipsolve.degrade, the code behind `ipsolve degrade`, one seed per
digit), then runs `ipsolve restore DIR` once on one process and once under
`torchrun --nproc-per-node 2` (gloo, one thread each), and prints a markdown table.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ipsolve.datasets import mnist32
from ipsolve.degrade import degrade
from ipsolve.measurement import write_measurement


def make_measurements(folder: Path, count: int, task: str, sigma_y_pixel: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, digit in enumerate(torch.from_numpy(mnist32("test")[:count])):
        y, op = degrade(digit, task, 2 * sigma_y_pixel, seed=index)
        write_measurement(folder / f"{index:05d}.png", y, op, 2 * sigma_y_pixel)


def timed(command: list, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def finals(out: Path) -> dict:
    return {p.parent.name: p.read_bytes() for p in out.glob("*/final.png")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--task", default="sr4")
    parser.add_argument("--sigma-y", type=float, default=0.025)
    parser.add_argument("--outer", type=int, default=4)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    make_measurements(work / "in", args.count, args.task, args.sigma_y)
    restore = ["-m", "ipsolve", "restore", str(work / "in"), "--outer", str(args.outer), "--inner", str(args.inner),
               "--batch-size", str(args.batch_size), "--quiet"]
    rows = []
    for processes, prefix in ((1, [sys.executable]),
                              (2, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"])):
        out = work / f"out{processes}"
        seconds = timed([*prefix, *restore, "--out", str(out)], threads=1)
        rows.append((processes, seconds, args.count / seconds))
    same = finals(work / "out1") == finals(work / "out2") and len(finals(work / "out1")) == args.count
    nfe = args.outer * args.inner
    print(f"{args.count} digits, {args.task} σ {args.sigma_y} pixel, {args.outer}x{args.inner} = {nfe} NFE, "
          f"batch {args.batch_size}, one thread per process\n")
    print("| processes | wall time (s) | images/s | NFE·images/s |\n|---|---|---|---|")
    for processes, seconds, rate in rows:
        print(f"| {processes} | {seconds:.1f} | {rate:.2f} | {rate * nfe:.1f} |")
    print(f"\nfinal.png identical on 1 and 2 processes: {same}")


if __name__ == "__main__":
    main()
