"""The GPU check: every GPU path of ipsolve run once, one markdown table out (see docs/performance.md).

    bash scripts/device_check.sh            # on a machine with one (or more) CUDA devices, < 8 minutes
    bash scripts/device_check.sh --cpu      # every row on the CPU at small sizes, a few minutes

Rows: the test suite's CUDA tests; operators and every solver on the device in float32 against the CPU
in float64 (TF32 off, same draws); fp16 / bf16 autocast restores against fp32 (mean PSNR of 8 held-out
digits restored by the embedded model, within 0.1 dB); the CelebA-HQ UNet (random weights) forward time
and peak memory per size, batch and precision; Nested DDRM 3×10 wall time and NFE/s; a two-process
torchrun evaluation (nccl on CUDA, gloo with --cpu) against a one-process run. Exit code 1 if a row fails.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import degradations
import solvers
from ipsolve.config import CONFIGS
from ipsolve.imageio import save_image
from ipsolve.metrics import psnr
from ipsolve.models import DDPMUNet, load_model
from ipsolve.models.diffusion import DiffusionModel
from ipsolve.models.schedules import alphas_cumprod_from_betas, betas_from_config

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "tests" / "data" / "mnist_heldout16.pt"
OPERATORS = ("deno", "sr4", "color", "inp", "inp_box", "deblur_uni", "deblur_gauss", "deblur_aniso",
             "sr_bicubic4", "cs4")
OPERATOR_TOL, SOLVER_TOL, PRECISION_DB = 1e-5, 1e-4, 0.1
# the speed rows: the CelebA-HQ UNet (random weights) at 256² on a GPU; --cpu runs the same code on the
# small UNet at 16² (the CelebA one takes seconds per call on a shared CPU), labelled so
FULL = {"unet": "CelebA-HQ UNet", "size": 256, "batches": (1, 8, 32), "images": 8, "repeats": 5}
SMALL = {"unet": "small UNet (CPU stand-in)", "size": 16, "batches": (1, 2), "images": 2, "repeats": 2}


class Table:
    """Rows of the one table; `failed` once any row fails."""

    def __init__(self):
        self.rows, self.failed = [], False

    def add(self, check, device, value, limit="", status="ok"):
        self.rows.append((check, device, value, limit, status))
        self.failed |= status == "FAIL"
        print(f"  {status:4} {check}: {value}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| check | device | value | limit | status |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def verdict(error: float, limit: float) -> str:
    return "ok" if error <= limit else "FAIL"


def fixed_noise(seed: int):
    """The same standard-normal draws on every device: drawn in float64 on the CPU, moved by the solver."""
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- rows
def cuda_tests(table: Table, device: torch.device) -> None:
    """The suite's tests marked `cuda` (skipped without a CUDA device)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests",
                           "-m", "cuda"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    passed = int((re.search(r"(\d+) passed", summary) or [0, 0])[1])
    if done.returncode not in (0, 5):
        status = "FAIL"
    elif passed == 0:
        status = "skip" if device.type == "cpu" else "FAIL"
    else:
        status = "ok"
    table.add("test suite: CUDA tests (pytest -m cuda)", device, summary, "all pass", status)


def operators(table: Table, device: torch.device, size: int) -> None:
    """H, Hᵀ and V Vᵀ of every operator within OPERATOR_TOL; H⁺ within the fp32 worst case κ·eps(fp32)
    (κ = s_max / s_min: the deblurring operators are ill-conditioned)."""
    generator = torch.Generator().manual_seed(0)
    for name in OPERATORS:
        op = degradations.make(name, channels=3, image_size=(size, size), seed=0)
        x = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
        y = op.H(x)
        error = max(relative_error(op.H(x.to(device, torch.float32)), y),
                    relative_error(op.Ht(y.to(device, torch.float32)), op.Ht(y)),
                    relative_error(op.V(op.Vt(x.to(device, torch.float32))), x))
        pinv_error = relative_error(op.H_pinv(y.to(device, torch.float32)), op.H_pinv(y))
        singulars = op.singulars()
        kappa = float(singulars.max() / singulars[singulars > 0].min())
        pinv_limit = max(OPERATOR_TOL, kappa * torch.finfo(torch.float32).eps)
        status = verdict(error, OPERATOR_TOL) if pinv_error <= pinv_limit else "FAIL"
        table.add(f"operator {name} {size}²: H, Hᵀ, VVᵀ; H⁺ (κ {kappa:.0e}) fp32 vs CPU fp64", device,
                  f"{error:.1e}; {pinv_error:.1e}", f"≤ {OPERATOR_TOL:g}; ≤ {pinv_limit:.0e}", status)


def small_unet(device: torch.device, dtype: torch.dtype, channels: int, precision: str = "fp32") -> DiffusionModel:
    """A small random-weight DDPM UNet (convolutions, attention, group norm) on `device` in `dtype`."""
    torch.manual_seed(0)
    net = DDPMUNet.from_config({"in_channels": channels, "out_ch": channels, "ch": 32, "ch_mult": [1, 2],
                                "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
                                "resamp_with_conv": True}, image_size=16)
    for parameter in net.parameters():  # random weights of a size that keeps ε̂ O(1)
        parameter.data.normal_(0, 0.05)
    betas = betas_from_config({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                               "num_diffusion_timesteps": 1000})
    return DiffusionModel(net.to(device, dtype), alphas_cumprod_from_betas(betas), (channels, 16, 16),
                          precision=precision, channels_last=device.type == "cuda")


def solver_problems(shape) -> dict:
    """{"sr4" | "blur+mask" | "saturate": (operator, y)}: one fixed image batch of `shape` measured by an SVD
    operator, a composition without an SVD and the nonlinear sensor, float64 on the CPU."""
    clean = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.5
    tasks = {"sr4": "sr4", "blur+mask": "deblur_uni+inp", "saturate": "saturate"}
    ops = {name: degradations.make(task, channels=shape[1], image_size=shape[2:]) for name, task in tasks.items()}
    return {name: (op, op.H(clean)) for name, op in ops.items()}


def on(problems: dict, device, dtype) -> dict:
    """The problems with their measurements moved to `device` and `dtype`."""
    return {name: (op, y.to(device, dtype)) for name, (op, y) in problems.items()}


def solver_runs(model, problems, shape):
    """Every solver, each a deterministic function of (model, draws); returns name → final x̂₀.
    problems: {"sr4" | "blur+mask" | "saturate": (operator, y)}, y on the model's device and dtype."""
    (op, y), (composed, y_composed), (sensor, y_sensor) = (problems[name] for name in ("sr4", "blur+mask", "saturate"))
    dtype, device = y.dtype, y.device
    x_T = (lambda: fixed_noise(1)(shape).to(device, dtype))
    sigma_y = 0.1
    steps = solvers.ddrm_timesteps(10)
    runs = {
        "ddrm, 10 calls": lambda: solvers.ddrm(model, y, op, sigma_y, steps, noise=fixed_noise(2)),
        "ddnm η=0.85, 10 calls": lambda: solvers.ddnm(model, y, op, sigma_y, steps, x_T=x_T(), noise=fixed_noise(2)),
        "pigdm, 10 calls": lambda: solvers.pigdm(model, y, op, sigma_y, steps, x_T=x_T(), noise=fixed_noise(2)),
        "pigdm on blur+mask (conjugate gradients), 10 calls": lambda: solvers.pigdm(
            model, y_composed, composed, sigma_y, steps, x_T=x_T(), noise=fixed_noise(2)),
        "dps, 10 calls": lambda: solvers.dps(model, y, op, steps, x_T=x_T(), noise=fixed_noise(2)),
        "dps on the saturating sensor, 10 calls": lambda: solvers.dps(model, y_sensor, sensor, steps, x_T=x_T(),
                                                                      noise=fixed_noise(2)),
        "ddim η=0.5, 10 calls": lambda: solvers.ddim(model, x_T(), steps, eta=0.5, noise=fixed_noise(2)),
        "ddpm, 10 calls": lambda: solvers.ddpm(model, x_T(), steps, noise=fixed_noise(2)),
        "dpm_solver 2M, 10 calls": lambda: solvers.dpm_solver(model, x_T(), steps, variant="2M"),
        "dpm_solver 2S, 10 calls": lambda: solvers.dpm_solver(model, x_T(), steps, variant="2S"),
    }
    restorers = {"ddrm": {"y": y, "op": op, "sigma_y": sigma_y}, "ddnm": {"y": y, "op": op, "sigma_y": sigma_y},
                 "pigdm": {"y": y, "op": op, "sigma_y": sigma_y}, "dps": {"y": y, "forward": op}}
    for inner, options in (*restorers.items(), ("ddim", {"eta": 0.5}), ("ddpm", {}), ("dpm_solver", {})):
        if inner == "ddrm":
            start = {}  # DDRM's y-aware start
        elif inner in restorers:
            start = {"x_T": x_T()}
        else:
            start = {"shape": shape, "dtype": dtype, "device": device}
        runs[f"nested({inner}), 3×4 calls"] = (lambda inner=inner, options=options, start=start: list(solvers.nested(
            model, inner=inner, outer_steps=3, inner_steps=4, noise=fixed_noise(3), **start, **options))[-1].x0)
    return runs


def every_solver(table: Table, device: torch.device) -> None:
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        _compare_solvers(table, device)
    finally:  # the speed rows measure torch's defaults
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _compare_solvers(table: Table, device: torch.device) -> None:
    shape, channels = (2, 3, 16, 16), 3
    problems = solver_problems(shape)
    reference = solver_runs(small_unet(torch.device("cpu"), torch.float64, channels), problems, shape)
    on_device = solver_runs(small_unet(device, torch.float32, channels), on(problems, device, torch.float32), shape)
    with torch.no_grad():
        for name, run in reference.items():
            error = relative_error(on_device[name](), run())
            table.add(f"solver {name}, 3×16² UNet: fp32 vs CPU fp64", device, f"{error:.1e}",
                      f"≤ {SOLVER_TOL:g}", verdict(error, SOLVER_TOL))


def precisions(table: Table, device: torch.device) -> None:
    """Mean PSNR of 8 held-out digits (sr4, σ = 0.05 pixel) restored by the embedded model, per precision."""
    clean = torch.load(DIGITS, weights_only=True)["images"][:8].float().div(255).to(device)
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    y = op.H(clean * 2 - 1) + 0.1 * fixed_noise(5)((8, *op.measurement_shape)).to(device, torch.float32)
    scores = {}
    for precision in ("fp32", "fp16", "bf16"):
        model = load_model("embedded", device=device, precision=precision)
        with torch.no_grad():
            x0 = list(solvers.nested(model, inner="ddrm", outer_steps=4, inner_steps=5, y=y, op=op, sigma_y=0.1,
                                     noise=fixed_noise(6)))[-1].x0
        scores[precision] = float(psnr((x0 + 1) / 2, clean).mean())
    for precision in ("fp16", "bf16"):
        gap = abs(scores[precision] - scores["fp32"])
        table.add(f"restore {precision} autocast vs fp32 (embedded, 8 digits, sr4, 4×5)", device,
                  f"{scores[precision]:.2f} vs {scores['fp32']:.2f} dB (Δ {gap:.3f})", f"≤ {PRECISION_DB} dB",
                  verdict(gap, PRECISION_DB))


def speed_unet(sizes: dict, device: torch.device, precision: str) -> DiffusionModel:
    if sizes is SMALL:
        return small_unet(device, torch.float32, 3, precision)
    config = yaml.safe_load((CONFIGS / "models" / "celeba_hq.yml").read_text())
    torch.manual_seed(0)
    net = DDPMUNet.from_config(config["model"], image_size=sizes["size"]).to(device)
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(config["diffusion"]))
    return DiffusionModel(net, alphas_cumprod, (3, sizes["size"], sizes["size"]), precision=precision,
                          channels_last=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forwards(table: Table, device: torch.device, sizes: dict) -> None:
    size, repeats = sizes["size"], sizes["repeats"]
    for precision in ("fp32", "fp16", "bf16"):
        model = speed_unet(sizes, device, precision)
        for batch in sizes["batches"]:
            x = torch.randn(batch, 3, size, size, device=device)
            t = torch.full((batch,), 500, device=device)
            with torch.inference_mode():
                model(x, t)  # warm-up: kernel choice, allocator
                synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                for _ in range(repeats):
                    model(x, t)
                synchronize(device)
            seconds = (time.perf_counter() - start) / repeats
            memory = (f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda"
                      else "")
            table.add(f"{sizes['unet']} forward {size}², batch {batch}, {precision}", device,
                      f"{seconds * 1000:.1f} ms{memory}", "", "ok")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def nested_speed(table: Table, device: torch.device, sizes: dict) -> None:
    size, images = sizes["size"], sizes["images"]
    model = speed_unet(sizes, device, "fp32")
    op = degradations.make("sr4", channels=3, image_size=(size, size))
    y = op.H(torch.rand(images, 3, size, size, device=device) * 2 - 1)
    calls = []
    with torch.inference_mode():
        synchronize(device)
        start = time.perf_counter()
        run = solvers.nested(model, inner="ddrm", outer_steps=3, inner_steps=10, y=y, op=op, sigma_y=0.0,
                             generator=torch.Generator(device).manual_seed(0), callback=calls.append)
        last = list(run)[-1]
        synchronize(device)
        seconds = time.perf_counter() - start
    status = "ok" if last.nfe == 30 == len(calls) and bool(torch.isfinite(last.x0).all()) else "FAIL"
    table.add(f"Nested DDRM 3×10 (sr4), {sizes['unet']}, {images} images of {size}², fp32", device,
              f"{seconds:.2f} s, {last.nfe / seconds:.1f} NFE/s ({images * last.nfe / seconds:.1f} image-NFE/s)",
              "30 NFE", status)


def torchrun_eval(table: Table, device: torch.device) -> None:
    """Two processes against one over the packaged embedded_smoke config: the same per-image rows."""
    if device.type == "cpu":
        backend, one_device, two_devices = "gloo", ["--device", "cpu"], ["--device", "cpu"]
    elif torch.cuda.device_count() >= 2:
        backend, one_device, two_devices = "nccl", ["--device", "cuda:0"], []  # rank r on cuda:r
    else:
        table.add("torchrun eval, 2 processes, nccl", device, "needs 2 GPUs: NCCL refuses two ranks on one device",
                  "", "skip")
        backend, one_device, two_devices = "gloo", ["--device", "cuda:0"], ["--device", "cuda:0"]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        digits = torch.load(DIGITS, weights_only=True)["images"][:4]
        for index, digit in enumerate(digits):
            save_image(digit.float() / 255, folder / "digits" / f"{index}.png")
        common = ["-m", "ipsolve", "eval", "--config", "embedded_smoke", "--data", str(folder / "digits"),
                  "--no-fid", "--batch-size", "2"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", IPSOLVE_DIST_BACKEND=backend)
        one = subprocess.run([sys.executable, *common, "--out", str(folder / "one"), *one_device],
                             env=env, capture_output=True, text=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        two = subprocess.run([*launcher, *common, "--out", str(folder / "two"), *two_devices],
                             env=env, capture_output=True, text=True)
        if one.returncode or two.returncode:
            failed = one if one.returncode else two
            message = (failed.stderr.strip().splitlines() or ["no output"])[-1][:150]
            table.add(f"torchrun eval, 2 processes, {backend}", device, message, "", "FAIL")
            return
        rows = [_rows(folder / name / "per_image.csv") for name in ("one", "two")]
        gap = max(abs(a - b) for a, b in zip(*rows)) if len(rows[0]) == len(rows[1]) > 0 else float("inf")
        table.add(f"torchrun eval, 2 processes, {backend}", device,
                  f"{len(rows[1])} rows, max ΔPSNR {gap:.1e} dB vs 1 process", "≤ 1e-4 dB", verdict(gap, 1e-4))


def _rows(path: Path) -> list[float]:
    with open(path) as file:
        return [float(row["psnr"]) for row in sorted(csv.DictReader(file), key=lambda r: tuple(r.items()))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every row on the CPU at small sizes")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("device_check: no CUDA device here; run with --cpu for the CPU version", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = SMALL if args.cpu else FULL
    name = "CPU" if args.cpu else torch.cuda.get_device_name(device)
    print(f"device_check on {name}, torch {torch.__version__}", file=sys.stderr)
    table, start = Table(), time.perf_counter()
    cuda_tests(table, device)
    operators(table, device, 16)
    every_solver(table, device)
    precisions(table, device)
    forwards(table, device, sizes)
    nested_speed(table, device, sizes)
    torchrun_eval(table, device)
    print(f"### device check: {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s\n")
    print(table.markdown())
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
