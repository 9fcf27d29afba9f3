"""Write held-out MNIST digits (ipsolve.datasets.mnist32("test")) as PNG files, a folder for `ipsolve eval`.

    python scripts/make_digit_folder.py OUT_DIR [COUNT]
"""
import sys
from pathlib import Path

import torch

from ipsolve.datasets import mnist32
from ipsolve.imageio import save_image


def main():
    out, count = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200
    out.mkdir(parents=True, exist_ok=True)
    for index, digit in enumerate(torch.from_numpy(mnist32("test")[:count])):
        save_image(digit, out / f"{index:05d}.png")
    print(f"{out}: {count} held-out digits")


if __name__ == "__main__":
    main()
