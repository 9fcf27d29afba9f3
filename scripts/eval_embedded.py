"""Evaluate the embedded MNIST model: a sample grid and DDRM restoration PSNR on held-out digits.

    python scripts/eval_embedded.py            # 64 samples (DDPM, 100 steps) + PSNR on mnist32("test")[:200]

Tasks (noise in model units [−1, 1]; pixel units [0, 1] are half): deno σ_y = 0.2 (pixel 0.1),
sr4 and inp (random 50 % of pixels) σ_y = 0.05 (pixel 0.025). DDRM: 20 NFEs (DDRM's grid), η = 0.85,
η_b = 1, seeded generator; baseline: H⁺y. PSNR on [0, 1] images, mean over the images.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import degradations
import solvers
from ipsolve.datasets import mnist32
from ipsolve.imageio import from_model, save_grid, to_model
from ipsolve.metrics import psnr
from ipsolve.models import load_model

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"deno": 0.2, "sr4": 0.05, "inp": 0.05}  # task → σ_y in model units


def sample_grid(model, count: int, sampler: str, steps: int, path: Path, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(count, *model.image_shape, generator=generator)
    timesteps = solvers.linspace_timesteps(0, len(model.alphas_cumprod) - 1, steps)
    with torch.inference_mode():
        x0 = getattr(solvers, sampler)(model, x_T, timesteps, generator=generator)
    save_grid(from_model(x0.clamp(-1, 1)), path, nrow=8)


def restoration_psnr(model, images: torch.Tensor, nfe: int, seed: int, batch: int) -> dict[str, tuple]:
    """task → (σ_y model units, mean PSNR of H⁺y, mean PSNR of DDRM)."""
    results = {}
    for task, sigma_y in TASKS.items():
        op = degradations.make(task, channels=1, image_size=(32, 32), seed=seed)
        generator = torch.Generator().manual_seed(seed)
        baseline, restored = [], []
        for chunk in images.split(batch):
            x = to_model(chunk)
            clean_y = op.H(x)
            y = clean_y + sigma_y * torch.randn(clean_y.shape, generator=generator)
            with torch.inference_mode():
                x0 = solvers.ddrm(model, y, op, sigma_y, solvers.ddrm_timesteps(nfe), generator=generator)
            baseline.append(psnr(from_model(op.H_pinv(y)), chunk))
            restored.append(psnr(from_model(x0), chunk))
        results[task] = (sigma_y, torch.cat(baseline).mean().item(), torch.cat(restored).mean().item())
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="first N held-out digits")
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddpm")
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--grid", type=Path, default=ROOT / "docs" / "images" / "embedded_samples.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model("embedded")
    start = time.perf_counter()
    sample_grid(model, args.samples, args.sampler, args.sample_steps, args.grid, args.seed)
    print(f"{args.samples} samples ({args.sampler}, {args.sample_steps} steps) -> {args.grid} "
          f"({time.perf_counter() - start:.0f} s)")

    images = torch.from_numpy(mnist32("test")[: args.images])
    start = time.perf_counter()
    results = restoration_psnr(model, images, args.nfe, args.seed, args.batch)
    print(f"\nDDRM ({args.nfe} NFEs) on mnist32('test')[:{len(images)}], PSNR dB ({time.perf_counter() - start:.0f} s)")
    print("task   sigma_y model (pixel)   H+ y    DDRM")
    for task, (sigma_y, base, ddrm) in results.items():
        print(f"{task:5s}  {sigma_y:5.3f} ({sigma_y / 2:5.3f})         {base:6.2f}  {ddrm:6.2f}")


if __name__ == "__main__":
    main()
