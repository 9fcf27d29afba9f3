"""`ipsolve restore DIR`: every measurement of a folder, batched, resumable, sharded over processes."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import degradations
from ipsolve.imageio import load_image
from ipsolve.measurement import write_measurement
from test_cli import ENV, ipsolve_run

DATA = Path(__file__).parent / "data"


@pytest.fixture
def measurements(tmp_path):
    """Five sr4 digits (σ 0.05 pixel) with sidecars, one deno digit, and a text file named .png."""
    folder = tmp_path / "in"
    folder.mkdir()
    images = torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"]
    sr4 = degradations.make("sr4", channels=1, image_size=(32, 32))
    deno = degradations.make("deno", channels=1, image_size=(32, 32))
    for i in range(6):
        op = deno if i == 5 else sr4
        x = images[i].float()[None] / 255 * 2 - 1
        y = op.H(x) + 0.1 * torch.randn(op.H(x).shape, generator=torch.Generator().manual_seed(i))
        write_measurement(folder / f"digit_{i}.png", y, op, sigma_y=0.1)
    (folder / "notes.png").write_text("not an image")
    shutil.copy(folder / "digit_0.png.json", folder / "notes.png.json")
    return folder


def index_rows(out: Path) -> list[dict]:
    with open(out / "index.csv") as handle:
        return list(csv.DictReader(handle))


def finals(out: Path) -> dict:
    return {p.parent.name: p.read_bytes() for p in sorted(out.glob("*/final.png"))}


def test_a_folder_is_restored_one_run_folder_each_and_a_bad_file_does_not_stop_the_rest(measurements, tmp_path):
    done = ipsolve_run("restore", measurements, "--outer", 2, "--inner", 2, "--batch-size", 3, "--quiet",
                       "--out", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # some failed: the summary on stderr, index.csv says why
    assert done.stderr == "ipsolve: 1 of 7 measurements failed: out/index.csv says why\n"
    assert "7 measurements, 6 restored, 0 reused, 1 failed" in done.stdout
    rows = {row["source"]: row for row in index_rows(tmp_path / "out")}
    assert rows["notes.png"]["status"].startswith("failed: ") and "image" in rows["notes.png"]["status"], rows
    assert all(rows[f"digit_{i}.png"]["status"] == "done" and rows[f"digit_{i}.png"]["nfe"] == "4" for i in range(6))
    assert rows["digit_5.png"]["task"] == "deno" and rows["digit_0.png"]["task"] == "sr4"
    # batched results equal one restore per file with the image's own seed (seed * 1_000_003 + index)
    single = ipsolve_run("restore", measurements / "digit_4.png", "--outer", 2, "--inner", 2, "--quiet",
                         "--seed", 4, "--out", "one", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    torch.testing.assert_close(load_image(tmp_path / "out" / "digit_4" / "final.png"),
                               load_image(tmp_path / "one" / "final.png"), rtol=0, atol=1.5 / 255)

    again = ipsolve_run("restore", measurements, "--outer", 2, "--inner", 2, "--batch-size", 3, "--quiet",
                        "--out", "out", cwd=tmp_path)
    assert "0 restored, 6 reused, 1 failed" in again.stdout, again.stdout + again.stderr
    # a changed measurement is restored again, the others reused
    shutil.copy(measurements / "digit_0.png", measurements / "digit_1.png")
    third = ipsolve_run("restore", measurements, "--outer", 2, "--inner", 2, "--batch-size", 3, "--quiet",
                        "--out", "out", cwd=tmp_path)
    assert "1 restored, 5 reused, 1 failed" in third.stdout, third.stdout + third.stderr


def test_two_processes_write_the_same_files_as_one(measurements, tmp_path):
    (measurements / "notes.png").unlink()
    (measurements / "notes.png.json").unlink()
    args = ["restore", str(measurements), "--outer", 2, "--inner", 2, "--batch-size", 1, "--quiet"]
    one = ipsolve_run(*args, "--out", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    env = {**ENV, "MASTER_ADDR": "127.0.0.1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(29500 + os.getpid() % 1000), "-m", "ipsolve", *map(str, args),
                          "--out", "two"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    assert finals(tmp_path / "one") == finals(tmp_path / "two") and len(finals(tmp_path / "one")) == 6
    strip = ("seconds",)
    drop = lambda rows: [{k: v for k, v in row.items() if k not in strip} for row in rows]  # noqa: E731
    assert drop(index_rows(tmp_path / "one")) == drop(index_rows(tmp_path / "two"))
