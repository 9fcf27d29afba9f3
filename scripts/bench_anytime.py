"""Anytime restoration on exact priors: PSNR against NFE for vanilla DDRM and Nested DDRM (paper Table 2).

Gaussian mixtures are fitted to real images available offline — MNIST digits at 1×8×8 and 3×6×6 patches
of the bundled photos — so the diffusion model is exact and the exact posterior mean (the MMSE bound)
and exact posterior samples are available as references. On held-out images (the MNIST test split; the
right quarter of every photo) it prints PSNR (dB, on [0, 1] after clamping, mean over images, one sample
per image) of the latest available answer at each NFE mark:

* DDRM 30 (x̂₀ so far): one 30-call DDRM run, its current x̂₀ prediction after k calls;
* DDRM k (final): separate DDRM runs of exactly k calls (needs the budget known in advance);
* Nested S×I: the latest preview of Nested DDRM with the default ("matched") schedule (uniform inner
  steps; "front"/"back" share the same 30 calls out as 15/10/5 and 5/10/15); "paper": the released
  code's grids (scripts/bench_regret.py measures the regret of both against plain DDRM);
* the exact posterior mean and an exact posterior sample.

Usage: python scripts/bench_anytime.py [--images 200] [--components 20]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import degradations
import solvers
from ipsolve.datasets import mnist32, photo
from ipsolve.metrics import psnr
from ipsolve.models import GaussianMixturePrior
from ipsolve.models.schedules import alphas_cumprod_from_betas

MARKS = (5, 10, 15, 20, 25, 30)
TOTAL = 30
SIGMA_Y = {"deno": 0.4, "sr2": 0.1, "inp": 0.1, "color": 0.1}  # model units ([0, 1] pixel units: half)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china.jpg", "flower.jpg")


def mnist_digits(split, size=8):
    """MNIST in model space at size×size (area downsampling), float64 (N, 1, size, size)."""
    digits = torch.from_numpy(mnist32(split)).to(torch.float64)
    return 2 * F.adaptive_avg_pool2d(digits, size) - 1


def photo_patches(patch=6, scale=4):
    """patch×patch crops of the photos downsampled by `scale`, in model space: overlapping crops (stride 2)
    of the left three quarters of every photo for training, non-overlapping ones of the right quarter held out."""
    train, test = [], []
    for name in PHOTOS:
        image = torch.from_numpy(photo(name)).permute(2, 0, 1)[None].to(torch.float64)
        small = 2 * F.avg_pool2d(image, scale) - 1
        split = small.shape[-1] * 3 // 4
        for part, out, stride in ((small[..., :split], train, 2), (small[..., split:], test, patch)):
            tiles = F.unfold(part, patch, stride=stride)  # (1, 3·patch², count)
            out.append(tiles[0].T.reshape(-1, 3, patch, patch))
    return torch.cat(train), torch.cat(test)


def ddrm_anytime(prior, y, op, sigma_y, calls, generator):
    """{nfe: current x̂₀} along one DDRM run of `calls` calls (top time as DDRM's grid for that many)."""
    grid = solvers.inner_timesteps(solvers.ddrm_timesteps(calls)[0], calls)
    seen = {}
    solvers.ddrm(prior, y, op, sigma_y, grid, generator=generator,
                 callback=lambda info: seen.__setitem__(info["nfe"], info["x0"]))
    return seen


def ddrm_final(prior, y, op, sigma_y, calls, generator):
    return {calls: ddrm_anytime(prior, y, op, sigma_y, calls, generator)[calls]}


def nested_previews(prior, y, op, sigma_y, outer, inner, generator, schedule="uniform", grids=None):
    run = solvers.nested(prior, "ddrm", outer_steps=outer, inner_steps=inner, inner_schedule=schedule,
                         schedule=grids, generator=generator, y=y, op=op, sigma_y=sigma_y)
    return {preview.nfe: preview.x0 for preview in run}


METHODS = {
    "DDRM 30 (x̂₀ so far)": lambda *a: ddrm_anytime(*a[:4], TOTAL, a[4]),
    "DDRM 10 (final)": lambda *a: ddrm_final(*a[:4], 10, a[4]),
    "DDRM 20 (final)": lambda *a: ddrm_final(*a[:4], 20, a[4]),
    "DDRM 30 (final)": lambda *a: ddrm_final(*a[:4], 30, a[4]),
    "Nested 3x10": lambda *a: nested_previews(*a[:4], 3, 10, a[4]),
    "Nested 3x10 paper": lambda *a: nested_previews(*a[:4], 3, 10, a[4], grids="paper"),
    "Nested 3x10 front": lambda *a: nested_previews(*a[:4], 3, 10, a[4], "front"),
    "Nested 3x10 back": lambda *a: nested_previews(*a[:4], 3, 10, a[4], "back"),
    "Nested 5x6": lambda *a: nested_previews(*a[:4], 5, 6, a[4]),
    "Nested 5x6 paper": lambda *a: nested_previews(*a[:4], 5, 6, a[4], grids="paper"),
    "Nested 5x6 front": lambda *a: nested_previews(*a[:4], 5, 6, a[4], "front"),
    "Nested 5x6 back": lambda *a: nested_previews(*a[:4], 5, 6, a[4], "back"),
}


def mean_psnr(x, clean):
    return psnr((x + 1) / 2, (clean + 1) / 2).mean().item()


def anytime_row(answers, clean):
    """PSNR of the latest answer available at each mark (None before the first)."""
    row = []
    for mark in MARKS:
        ready = [nfe for nfe in answers if nfe <= mark]
        row.append(mean_psnr(answers[max(ready)], clean) if ready else None)
    return row


def bench_task(prior, clean, task, seed=0):
    channels, height, width = clean.shape[1:]
    op = degradations.make(task, channels=channels, image_size=(height, width), seed=seed)
    sigma_y = SIGMA_Y[task]
    g = torch.Generator().manual_seed(seed)
    measured = op.H(clean)
    y = measured + sigma_y * torch.randn(measured.shape, generator=g, dtype=measured.dtype)
    rows = {name: anytime_row(method(prior, y, op, sigma_y, torch.Generator().manual_seed(seed + 1)), clean)
            for name, method in METHODS.items()}
    posterior = prior.posterior(y, op, sigma_y)
    rows["exact posterior mean (MMSE)"] = [mean_psnr(posterior.mean, clean)] * len(MARKS)
    rows["exact posterior sample"] = [mean_psnr(posterior.sample(1, generator=g)[0], clean)] * len(MARKS)
    return rows


def print_table(title, rows):
    print(f"\n{title}\n{'method':30s}" + "".join(f"{f'NFE {m}':>9s}" for m in MARKS))
    for name, row in rows.items():
        print(f"{name:30s}" + "".join(f"{'—' if v is None else f'{v:.2f}':>9s}" for v in row))


def print_claims(title, rows):
    at = {m: i for i, m in enumerate(MARKS)}
    final = rows["DDRM 30 (final)"][at[30]]
    early = rows["Nested 3x10"][at[10]]
    print(f"  claims ({title}): Nested 3x10 at NFE 10 vs DDRM 30 final: {early - final:+.2f} dB; "
          f"DDRM's own x̂₀ at NFE 10: {rows['DDRM 30 (x̂₀ so far)'][at[10]] - final:+.2f} dB; "
          f"finals (Nested 3x10 − DDRM 30): {rows['Nested 3x10'][at[30]] - final:+.2f} dB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="held-out images per dataset")
    parser.add_argument("--components", type=int, default=20, help="mixture components")
    args = parser.parse_args()
    alphas_cumprod = alphas_cumprod_from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    patches_train, patches_test = photo_patches()
    datasets = {
        "MNIST 1x8x8": (mnist_digits("train"), mnist_digits("test"), ("deno", "sr2", "inp")),
        "photo patches 3x6x6": (patches_train, patches_test, ("deno", "sr2", "inp", "color")),
    }
    for name, (train, test, tasks) in datasets.items():
        start = time.time()
        prior = GaussianMixturePrior.fit(train, args.components, alphas_cumprod, iterations=100,
                                         generator=torch.Generator().manual_seed(0))
        clean = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:args.images]]
        print(f"\n=== {name}: {args.components}-component mixture fitted to {len(train)} images in "
              f"{time.time() - start:.0f} s; {len(clean)} held-out images; σ_y (model units) {SIGMA_Y}")
        for task in tasks:
            start = time.time()
            rows = bench_task(prior, clean, task)
            print_table(f"{name}, {task} (σ_y = {SIGMA_Y[task]}), {time.time() - start:.0f} s", rows)
            print_claims(f"{name}, {task}", rows)


if __name__ == "__main__":
    main()
