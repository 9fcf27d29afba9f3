"""Sharding work over processes started by torchrun (or one process when WORLD_SIZE is unset).

Rank r of K takes dataset indices r, r+K, r+2K, …: no index is padded or repeated, and because every
image draws its randomness from its own seed (`image_seed`) the union of the shards equals a one-process
run. The process group (gloo on CPU, nccl on GPU, or $IPSOLVE_DIST_BACKEND) is only created when
WORLD_SIZE > 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKEND_ENV = "IPSOLVE_DIST_BACKEND"  # overrides the process group backend (e.g. gloo for two ranks on one GPU)
SEED_STRIDE = 1_000_003  # a prime larger than any dataset, so (seed, index) pairs never collide


def image_seed(seed: int, index: int) -> int:
    """The seed of dataset image `index` in a run seeded with `seed` (no Python hash involved)."""
    return seed * SEED_STRIDE + index


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for one image (draws are moved to the model's device afterwards)."""
    return torch.Generator().manual_seed(image_seed(seed, index))


def per_image_noise(generators: list[torch.Generator], samples: int = 1):
    """noise(shape) for a batch: row b is drawn from generators[b] (CPU, float32), so an image's draws do
    not depend on which other images share its batch. With `samples` K, the batch holds K draws of each
    image, measurement-major (`solvers.estimates.repeat_for_samples`): rows b·K … b·K + K − 1 draw, in
    that order, from generators[b]."""
    rows = [g for g in generators for _ in range(samples)]

    def noise(shape):
        if shape[0] != len(rows):
            raise ValueError(f"noise asked for a batch of {shape[0]}, the batch has {len(rows)} rows "
                             f"({len(generators)} images x {samples} samples)")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in rows])
    return noise


@dataclass(frozen=True)
class Workers:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> range:
        """The dataset indices this process handles."""
        return range(self.rank, count, self.world_size)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def start(device: str | None = None) -> Workers:
    """Join the torchrun process group if there is one; pick this process's device.

    `device` None means cuda (this rank's LOCAL_RANK) when available, else cpu.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world_size == 1:
        return Workers(device=chosen)
    if not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(os.environ.get(BACKEND_ENV) or ("nccl" if chosen.type == "cuda" else "gloo"))
    return Workers(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen)


def stop(workers: Workers) -> None:
    """Leave the process group (a no-op for one process)."""
    if workers.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
