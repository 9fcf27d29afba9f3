"""Sharded evaluation: two gloo processes give the results of one process."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ipsolve import distributed
from ipsolve.config import CONFIGS
from ipsolve.imageio import save_image

SMOKE = CONFIGS / "eval" / "embedded_smoke.yml"


def test_shards_cover_every_index_once():
    shards = [list(distributed.Workers(rank=r, world_size=3).shard(8)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_image_seed_is_a_plain_integer_combination():
    assert distributed.image_seed(2, 5) == 2 * 1_000_003 + 5
    a, b = distributed.image_generator(2, 5), distributed.image_generator(2, 5)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def read_rows(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def run_eval(out, data, launcher):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [*launcher, "-m", "ipsolve", "eval", "--config", str(SMOKE), "--data", str(data),
               "--limit", "3", "--out", str(out), "--no-fid", "--device", "cpu", "--batch-size", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_gloo_processes_equal_one_process(tmp_path):
    data = tmp_path / "digits"
    images = torch.load(Path(__file__).parent / "data" / "mnist_heldout16.pt", weights_only=True)["images"]
    for i in range(3):
        save_image(images[i].float() / 255, data / f"{i}.png")
    run_eval(tmp_path / "one", data, [sys.executable])
    run_eval(tmp_path / "two", data, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc-per-node", "2"])
    for name in ("per_image.csv", "results.csv"):
        one, two = read_rows(tmp_path / "one" / name), read_rows(tmp_path / "two" / name)
        assert len(one) == len(two) > 0
        for a, b in zip(one, two):
            numbers = {"psnr", "lpips", "fid", "kid", "to_final_mse", "to_final_lpips"} & set(a)
            assert {k: a[k] for k in a if k not in numbers} == {k: b[k] for k in b if k not in numbers}
            for key in numbers - {"fid", "kid"}:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6)
    assert (tmp_path / "two" / "results.json").read_text().count('"processes": 2') == 1
