"""Regenerate the measurements shipped in ipsolve/examples/ with `ipsolve degrade`.

A held-out MNIST digit (`ipsolve.datasets.mnist32("test")`, never seen by the embedded model in training)
is degraded two ways: 4× super-resolution with noise 0.05 ([0, 1] pixel units) → digit_sr4.png, and
inpainting of a random half of the pixels → digit_inp.png (+ its mask). The clean digit is kept as
digit_clean.png for comparison.

    python scripts/make_examples.py [--index 0]
"""
import argparse
import subprocess
import sys
from pathlib import Path

import torch

from ipsolve.datasets import mnist32
from ipsolve.imageio import save_image

EXAMPLES = Path(__file__).resolve().parents[1] / "ipsolve" / "examples"
MEASUREMENTS = {"digit_sr4.png": ["--task", "sr4", "--sigma-y", "0.05"],
                "digit_inp.png": ["--task", "inp", "--sigma-y", "0.0"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=0, help="which held-out digit (0–499)")
    args = parser.parse_args()
    clean = EXAMPLES / "digit_clean.png"
    save_image(torch.from_numpy(mnist32("test")[args.index]), clean)
    for name, options in MEASUREMENTS.items():
        subprocess.run([sys.executable, "-m", "ipsolve", "degrade", str(clean), *options, "--seed", "0",
                        "-o", str(EXAMPLES / name)], check=True)


if __name__ == "__main__":
    main()
