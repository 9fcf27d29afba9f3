"""Train the embedded default model: a small pixel DDPM on MNIST-5k (1×32×32, model space [−1, 1]).

    python scripts/train_embedded.py --max-minutes 55 --threads 1

ε-prediction loss, linear β, Adam, EMA; no random flips (digits). Every ``--checkpoint-minutes`` it
writes (atomically) a resumable training state and exports the EMA weights and their record
(``ipsolve/weights/embedded_mnist32.{pt,yml}``); rerunning the command resumes from the state.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ipsolve.datasets import cache_dir, mnist32
from ipsolve.models.loading import file_sha256
from ipsolve.models.schedules import alphas_cumprod_from_betas, betas_from_config
from ipsolve.models.unet import DDPMUNet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "ipsolve" / "configs" / "models" / "embedded_mnist32.yml"
DEFAULT_WEIGHTS = ROOT / "ipsolve" / "weights" / "embedded_mnist32.pt"
DEFAULT_STATE = cache_dir() / "train_embedded" / "state.pt"


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)




def export(ema: DDPMUNet, config: dict, stats: dict, weights: Path) -> None:
    """Write the EMA weights (fp32 state_dict) and the YAML record next to them."""
    atomic_save({k: v.detach().clone() for k, v in ema.state_dict().items()}, weights)
    record = dict(config, weights={"file": weights.name, "sha256": file_sha256(weights),
                                   "size_bytes": weights.stat().st_size,
                                   "num_parameters": sum(p.numel() for p in ema.parameters())},
                  results=stats)
    record_path = weights.with_suffix(".yml")
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp, record_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="where the EMA weights go")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="resumable training state")
    parser.add_argument("--max-minutes", type=float, default=55.0, help="wall-clock limit of this invocation")
    parser.add_argument("--max-steps", type=int, default=None, help="overrides training.max_steps")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    train = config["training"]
    max_steps = args.max_steps or train["max_steps"]

    data = torch.from_numpy(mnist32("train")) * 2 - 1
    alphas_cumprod = alphas_cumprod_from_betas(betas_from_config(config["diffusion"])).float()
    net = DDPMUNet.from_config(config["model"], image_size=config["data"]["image_size"])
    ema = DDPMUNet.from_config(config["model"], image_size=config["data"]["image_size"])
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=train["lr"])
    generator = torch.Generator().manual_seed(train["seed"])
    step, elapsed, smoothed_loss = 0, 0.0, None

    if args.state.exists() and not args.fresh:
        state = torch.load(args.state, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, smoothed_loss = state["step"], state["elapsed"], state["smoothed_loss"]

    def checkpoint() -> None:
        atomic_save({"net": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "step": step, "elapsed": elapsed,
                     "smoothed_loss": smoothed_loss}, args.state)
        export(ema, config, {"steps": step, "samples_seen": step * train["batch_size"],
                             "final_loss": None if smoothed_loss is None else round(smoothed_loss, 5),
                             "loss_note": "exponential moving average (0.99) of the per-batch eps-MSE",
                             "wall_time_minutes": round(elapsed / 60, 2),
                             "torch_threads": args.threads, "torch_version": str(torch.__version__)}, args.weights)

    started = time.monotonic()
    session_start_elapsed, last_checkpoint = elapsed, elapsed
    batch = train["batch_size"]
    with tqdm(total=max_steps, initial=step, desc="train_embedded", unit="step") as bar:
        while step < max_steps and (elapsed - session_start_elapsed) < args.max_minutes * 60:
            x0 = data[torch.randint(len(data), (batch,), generator=generator)]
            t = torch.randint(len(alphas_cumprod), (batch,), generator=generator)
            eps = torch.randn(x0.shape, generator=generator)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            loss = (net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), net.parameters()):
                    p_ema.lerp_(p, 1 - train["ema_rate"])
            step += 1
            smoothed_loss = loss.item() if smoothed_loss is None else 0.99 * smoothed_loss + 0.01 * loss.item()
            elapsed = session_start_elapsed + time.monotonic() - started
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed_loss:.4f}")
            if elapsed - last_checkpoint >= args.checkpoint_minutes * 60:
                checkpoint()
                last_checkpoint = elapsed
    checkpoint()
    print(f"steps {step}, smoothed loss {smoothed_loss:.4f}, {elapsed / 60:.1f} min; weights -> {args.weights}")


if __name__ == "__main__":
    main()
