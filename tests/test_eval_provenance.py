"""`ipsolve eval` never reuses stale work: every stored result is keyed by what produced it.

The truth each test compares with is a fresh evaluation in an empty folder (an independent run), never
the resumed folder's own earlier output.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.config import load_eval_config
from ipsolve.imageio import save_image
from ipsolve.models import IsotropicGaussianPrior, load_model
from ipsolve.services.evaluation import evaluate

DATA = Path(__file__).parent / "data"
TABLES = ("per_image.csv", "results.csv", "table.md")


def digit_folder(folder: Path, first: int, count: int = 4) -> Path:
    images = torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_image(images[first + i].float() / 255, folder / f"digit_{i}.png")
    return folder


def config_file(folder: Path, eta: float = 0.85, fid=None, tasks=("sr4",), **changes) -> Path:
    data = {"model": "gaussian:1x32x32", "seed": 1, "batch_size": 2, "budgets": [2, 4],
            "tasks": [{"name": name, "operator": name, "sigma_y_pixel": 0.05} for name in tasks],
            "methods": {"ddrm": {"eta": eta}, "nested": {"inner_steps": 2, "eta": eta}},
            "metrics": {"lpips": None, "fid": fid}, **changes}
    path = folder / f"eval_{eta}_{fid}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def tables(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in TABLES}


def test_a_changed_config_is_refused_and_overwrite_recomputes_everything(tmp_path):
    data = digit_folder(tmp_path / "data", 0)
    first, second = load_eval_config(config_file(tmp_path, 0.85)), load_eval_config(config_file(tmp_path, 0.2))
    out = tmp_path / "out"
    evaluate(first, data, out)
    with pytest.raises(ValueError, match=r"other settings \(methods.ddrm.options.eta is 0.85 there, 0.2 here\): pass --overwrite"):
        evaluate(second, data, out)
    report = evaluate(second, data, out, overwrite=True)
    assert report["reused"] == 0 and report["computed"] == 3 * 4
    evaluate(second, data, tmp_path / "fresh")
    assert tables(out) == tables(tmp_path / "fresh")


def test_other_data_or_other_weights_are_recomputed_never_reused(tmp_path):
    config = load_eval_config(config_file(tmp_path))
    out = tmp_path / "out"
    evaluate(config, digit_folder(tmp_path / "a", 0), out)
    # the same file names with other digits behind them: every result must be recomputed
    report = evaluate(config, digit_folder(tmp_path / "b", 4), out)
    assert report["reused"] == 0 and report["computed"] == report["replaced"] == 3 * 4
    evaluate(config, tmp_path / "b", tmp_path / "fresh")
    assert tables(out) == tables(tmp_path / "fresh")
    # one image changed: only the batches holding it are recomputed (both runs of its batch of two)
    shutil.copy(tmp_path / "a" / "digit_3.png", tmp_path / "b" / "digit_3.png")
    report = evaluate(config, tmp_path / "b", out)
    assert (report["computed"], report["reused"]) == (3, 3 * 4 - 3)
    # the same model name with other weights (a prior of another variance): everything is recomputed
    named = load_model("gaussian:1x32x32")
    model = IsotropicGaussianPrior(named.mean, 2 * named.variance, named.alphas_cumprod)
    report = evaluate(config, tmp_path / "b", out, model=model)
    assert report["reused"] == 0 and report["computed"] == 3 * 4


def test_resumed_after_kill_9_at_three_moments_gives_byte_identical_tables(tmp_path):
    data = digit_folder(tmp_path / "data", 0, count=4)
    config = config_file(tmp_path, fid="clean")
    command = [sys.executable, "-m", "ipsolve", "eval", "--config", str(config), "--data", str(data)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    expected = tables(tmp_path / "whole")

    out = tmp_path / "resumed"

    def stored(folder):  # the records, not the hidden temporary files a killed run leaves behind
        return [p for p in folder.glob("sr4/*/*/*.json") if not p.name.startswith(".")]

    records = len(stored(tmp_path / "whole"))  # 2 methods x 2 budgets x 4 images
    assert records == 16
    moments = {  # what must exist in the folder when the process is killed
        "solving": lambda: any(stored(out)),
        "FID": lambda: len(stored(out)) == records,  # every record: FID / KID next
        "report": lambda: (out / "per_image.csv").is_file(),
    }
    for moment, reached in moments.items():
        if out.exists():
            for name in TABLES:
                (out / name).unlink(missing_ok=True)
        process = subprocess.Popen([*command, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not reached() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert reached(), f"the run ended before the {moment} moment"
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert tables(out) == expected


def test_lpips_is_skipped_with_a_note_when_the_images_are_too_small_for_its_network(tmp_path, capsys):
    from ipsolve.cli import main

    data = digit_folder(tmp_path / "data", 0, count=2)
    config = tmp_path / "small.yml"
    config.write_text(yaml.safe_dump({"model": "embedded", "tasks": [{"name": "deno", "operator": "deno"}],
                                      "budgets": [2], "methods": {"ddrm": {}}, "metrics": {"lpips": "alex"}}))
    code = main(["eval", "--config", str(config), "--data", str(data), "--model", "gaussian:3x8x8", "--no-fid",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert "LPIPS (alex) was skipped: its network cannot take 8x8 images" in (tmp_path / "out" / "table.md").read_text()
    assert "nan" in (tmp_path / "out" / "results.csv").read_text().splitlines()[1]
