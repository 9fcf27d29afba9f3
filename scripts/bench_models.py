"""Forward cost of the CelebA-HQ DDPM UNet (random weights) and the solvers' overhead around it.

    python scripts/bench_models.py                      # CPU, plus CUDA when available
    python scripts/bench_models.py --sizes 64 --batches 1 --solver-size 64   # quick

Forward: seconds per call and peak memory at each size × batch. CPU peak memory is the growth of the
process's maximum resident set size (``resource.getrusage(...).ru_maxrss``) over a forward, measured in a
fresh process per configuration after the weights are built, i.e. activations + workspace on top of the
weights; CUDA peak memory is ``torch.cuda.max_memory_allocated`` (weights included).
Solver overhead: the time ddrm (sr4) and nested (DDRM inside, 4 outer × 5 inner) spend outside the
network at 20 NFEs, measured with the network replaced by a stand-in ε-model of negligible cost (wrapped
to time its calls), so the figure does not wait on twenty CPU forwards of the real UNet; its share of a
real run is overhead / (overhead + UNet forward time) at that size (target ≤ 3 %).
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import torch
import yaml

import degradations
import solvers
from ipsolve.models import DDPMUNet
from ipsolve.models.diffusion import DiffusionModel
from ipsolve.models.schedules import alphas_cumprod_from_betas, betas_from_config

CONFIG = Path(__file__).resolve().parents[1] / "ipsolve" / "configs" / "models" / "celeba_hq.yml"
NFE = 20


def celeba_model(device: str) -> DiffusionModel:
    config = yaml.safe_load(CONFIG.read_text())
    net = DDPMUNet.from_config(config["model"], image_size=config["data"]["image_size"]).to(device)
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(config["diffusion"]))
    return DiffusionModel(net, alphas_cumprod, (3, 256, 256), channels_last=device == "cuda")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def forward_figures(size: int, batch: int, device: str, repeats: int) -> tuple[float, float]:
    """(seconds per forward, peak MiB) for one configuration; run in a fresh process."""
    model = celeba_model(device)
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.full((batch,), 500, device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        if device == "cuda":  # warm-up (kernel selection); a CPU forward has no comparable first-call cost
            model(x, t)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, t)
        synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
    return seconds, peak_mib


class StandInModel:
    """An ε-model of negligible cost (one multiply) that counts its calls and the time spent in them."""

    def __init__(self, alphas_cumprod: torch.Tensor, device: str):
        self.alphas_cumprod, self.device = alphas_cumprod, device
        self.seconds, self.calls = 0.0, 0

    def __call__(self, x, t, cond=None):
        synchronize(self.device)
        start = time.perf_counter()
        eps = 0.5 * x
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return eps


def solver_overhead(size: int, device: str) -> dict[str, tuple[float, int]]:
    """solver → (seconds outside the network per NFE, NFEs) for a batch-1 sr4 run at NFE calls."""
    config = yaml.safe_load(CONFIG.read_text())
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(config["diffusion"]))
    op = degradations.make("sr4", channels=3, image_size=(size, size))
    generator = torch.Generator(device).manual_seed(0)
    y = op.H(torch.rand(1, 3, size, size, device=device, generator=generator) * 2 - 1)
    sigma_y = 0.05
    runs = {
        "ddrm": lambda m: solvers.ddrm(m, y, op, sigma_y, solvers.ddrm_timesteps(NFE), generator=generator),
        "nested": lambda m: [p for p in solvers.nested(m, inner="ddrm", outer_steps=4, inner_steps=5, y=y, op=op,
                                                       sigma_y=sigma_y, generator=generator)],
    }
    figures = {}
    with torch.inference_mode():
        for name, run in runs.items():
            stand_in = StandInModel(alphas_cumprod, device)
            start = time.perf_counter()
            run(stand_in)
            synchronize(device)
            outside = time.perf_counter() - start - stand_in.seconds
            figures[name] = (outside / stand_in.calls, stand_in.calls)
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards after one warm-up")
    parser.add_argument("--solver-size", type=int, default=256)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"CelebA-HQ DDPM UNet ({CONFIG.name}), random weights; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    context = multiprocessing.get_context("spawn")

    def measure(size, batch, device):
        with context.Pool(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            return pool.apply(forward_figures, (size, batch, device, args.repeats))

    for device in args.devices:
        memory = "max RSS growth" if device == "cpu" else "max allocated"
        print(f"\n[{device}] forward: size batch  s/forward  peak MiB ({memory})")
        seconds = {}
        for size in args.sizes:
            for batch in args.batches:
                seconds[size, batch], peak = measure(size, batch, device)
                print(f"  {size:4d}² {batch:5d}  {seconds[size, batch]:9.3f}  {peak:9.0f}")
        forward = seconds.get((args.solver_size, 1)) or measure(args.solver_size, 1, device)[0]
        print(f"[{device}] solver overhead at {args.solver_size}², batch 1, sr4 (UNet forward {forward:.3f} s):")
        for name, (outside, calls) in solver_overhead(args.solver_size, device).items():
            share = 100 * outside / (outside + forward)
            print(f"  {name:7s} {calls} NFEs: outside the network {1000 * outside:8.2f} ms/NFE "
                  f"= {share:5.2f} % of a run")


if __name__ == "__main__":
    main()
