"""The `ipsolve` command driven as a user drives it: a subprocess, the embedded 1×32×32 model, few NFEs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import ipsolve
from ipsolve.degrade import degrade
from ipsolve.figures import FONT_SIZE, GAP
from ipsolve.imageio import from_model, load_image, save_image

EXAMPLES = Path(ipsolve.__file__).parent / "examples"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def command(*args):
    return [sys.executable, "-m", "ipsolve", *map(str, args)]


def ipsolve_run(*args, cwd):
    return subprocess.run(command(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def previews_in(folder):
    return sorted(Path(folder).glob("preview_*.png"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding the shipped clean digit and its sr4 measurement (σ = 0.05) made by `ipsolve degrade`."""
    folder = tmp_path_factory.mktemp("cli")
    shutil.copy(EXAMPLES / "digit_clean.png", folder / "digit.png")
    done = ipsolve_run("degrade", "digit.png", "--task", "sr4", "--sigma-y", "0.05", "--seed", "0",
                       "-o", "m/sr4.png", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def test_help_for_every_command_and_version(tmp_path):
    top = ipsolve_run("--help", cwd=tmp_path)
    assert top.returncode == 0 and all(name in top.stdout for name in ("restore", "degrade", "generate", "eval"))
    assert ipsolve_run("--version", cwd=tmp_path).stdout.strip() == f"ipsolve {ipsolve.__version__}"
    for name in ("restore", "degrade", "generate", "eval"):
        shown = ipsolve_run(name, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: ipsolve {name}"), shown.stderr


def test_degrade_writes_the_measurement_and_its_sidecar_in_both_units(work):
    sidecar = json.loads((work / "m" / "sr4.png.json").read_text())
    assert sidecar["operator"]["name"] == "sr4" and sidecar["sigma_y"] == {"model": 0.1, "pixel": 0.05}
    y = load_image(work / "m" / "sr4.png")
    block_means = torch.nn.functional.avg_pool2d(load_image(work / "digit.png")[None], 4)[0]
    assert y.shape == (1, 8, 8)
    assert (y - block_means).abs().max() < 5 * 0.05  # noise of σ = 0.05, clipped to [0, 1]
    # exactly the library's y = H x + σ n with σ = 2 × 0.05 in model units and n drawn from --seed 0
    library_y, _ = degrade(load_image(work / "digit.png"), "sr4", sigma_y=0.1, seed=0)
    expected = (from_model(library_y[0]).clamp(0, 1) * 255).round() / 255
    assert (y - expected).abs().max() <= 1.01 / 255
    assert (y - (block_means * 255).round() / 255).abs().max() > 0.05  # not noiseless


def test_restore_writes_previews_final_strip_gif_and_record(work):
    done = ipsolve_run("restore", "m/sr4.png", "--model", "embedded", "--outer", 3, "--inner", 2, "--batch", 2,
                       "--seed", 1, "--out", "out", cwd=work)
    assert done.returncode == 0, done.stderr
    out = work / "out"
    assert [p.name for p in previews_in(out)] == ["preview_01_nfe002.png", "preview_02_nfe004.png",
                                                  "preview_03_nfe006.png"]
    torch.testing.assert_close(load_image(out / "final.png"), load_image(previews_in(out)[-1]))
    cell = 32 + 2  # images are drawn with a 2-pixel border
    assert Image.open(out / "final.png").size == (2 * cell + 2, cell + 2)  # two samples side by side
    tile, line = 8 * 32, FONT_SIZE + 6  # 32×32 enlarged ×8; a label line above the tiles
    # the measurement and 3 previews in a row; a row per sample; no PSNR line (the clean image is unknown)
    assert Image.open(out / "strip.png").size == (GAP + 4 * (tile + GAP), line + 2 * (tile + GAP))
    with Image.open(out / "anytime.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (GAP + 2 * (tile + GAP), line + 2 * (tile + GAP))
    record = json.loads((out / "run.json").read_text())
    assert [p["nfe"] for p in record["previews"]] == [2, 4, 6] and record["nfe"] == 6
    assert record["sigma_y"] == {"pixel": 0.05, "model": 0.1} and record["seed"] == 1
    assert record["task"]["name"] == "sr4" and record["model"]["image_shape"] == [1, 32, 32]
    assert record["ipsolve_version"] == ipsolve.__version__ and record["elapsed_s"] > 0
    assert not record["interrupted"] and record["arguments"]["batch"] == 2
    # not a terminal: one progress line per preview, no carriage returns
    assert "\r" not in done.stderr
    assert re.findall(r"^restore: preview (\d) at NFE (\d)/6 ", done.stderr, re.M) == [("1", "2"), ("2", "4"),
                                                                                        ("3", "6")]


def test_vanilla_ddrm_writes_its_x0_at_the_same_nfe_marks(work):
    done = ipsolve_run("restore", "m/sr4.png", "--outer", 3, "--inner", 2, "--vanilla", "--quiet", "--out", "plain",
                       cwd=work)
    assert done.returncode == 0, done.stderr
    record = json.loads((work / "plain" / "run.json").read_text())
    assert [p["nfe"] for p in record["previews"]] == [2, 4, 6] and record["solver"] == "ddrm"
    assert len(previews_in(work / "plain")) == 3 and (work / "plain" / "strip.png").exists()


def test_budget_on_a_non_square_image(work):
    made = ipsolve_run("degrade", "digit.png", "--task", "sr4", "--size", "32x48", "-o", "wide.png", cwd=work)
    assert made.returncode == 0, made.stderr
    assert Image.open(work / "wide.png").size == (12, 8)
    done = ipsolve_run("restore", "wide.png", "--outer", 4, "--inner", 2, "--budget", 5, "--quiet",
                       "--out", "wide", cwd=work)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in previews_in(work / "wide")] == ["preview_01_nfe003.png", "preview_02_nfe005.png"]
    assert load_image(work / "wide" / "final.png").shape == (1, 32, 48)


def default_sigint():
    """In the child before exec: a pytest started with SIGINT ignored (a background job) passes that on,
    and Python then installs no KeyboardInterrupt handler; `restore_signals` does not cover SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_latest_preview_as_final(tmp_path):
    process = subprocess.Popen(command("restore", "example", "--outer", 200, "--inner", 5, "--schedule", "paper", "--out", "run"),
                               cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not previews_in(tmp_path / "run") and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    message = re.search(r"ipsolve: interrupted after NFE (\d+): kept preview (\d+) as final.png", stderr)
    assert message, stderr
    nfe, kept = int(message.group(1)), int(message.group(2))
    last = previews_in(tmp_path / "run")[-1]
    assert last.name == f"preview_{kept:02d}_nfe{5 * kept:03d}.png" and 5 * kept <= nfe < 1000
    torch.testing.assert_close(load_image(tmp_path / "run" / "final.png"), load_image(last))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["interrupted"] and record["nfe"] == nfe and len(record["previews"]) == kept


def write_plain_image(path, height, width):
    save_image(torch.rand(1, height, width, generator=torch.Generator().manual_seed(0)), path)


BAD_INPUTS = {
    "missing measurement": ["restore", "missing.png", "--out", "o"],
    "not an image": ["restore", "notes.txt", "--task", "deno", "--out", "o"],
    "outer 0": ["restore", "plain.png", "--outer", "0", "--out", "o"],
    "negative sigma": ["restore", "plain.png", "--sigma-y", "-0.1", "--out", "o"],
    "eta above 1": ["restore", "plain.png", "--eta", "1.5", "--out", "o"],
    "budget below one inner run": ["restore", "plain.png", "--inner", "5", "--budget", "3", "--out", "o"],
    "unwritable output": ["restore", "plain.png", "--task", "deno", "--out", "notes.txt/o"],
    "unknown example": ["restore", "example:nope", "--out", "o"],
    "unknown task": ["restore", "plain.png", "--task", "frobnicate", "--out", "o"],
    "size the model cannot take": ["restore", "plain.png", "--task", "deno", "--out", "o"],
    "missing model": ["restore", "plain.png", "--task", "deno", "--model", "nowhere.pt", "--out", "o"],
    "degrade missing image": ["degrade", "missing.png", "--task", "sr4", "-o", "y.png"],
    "degrade unknown task": ["degrade", "plain.png", "--task", "frobnicate", "-o", "y.png"],
    "degrade wrong size for task": ["degrade", "plain.png", "--task", "sr5", "-o", "y.png"],
    "degrade not png": ["degrade", "plain.png", "--task", "sr4", "-o", "y.jpg"],
    "degrade nan sigma": ["degrade", "plain.png", "--task", "sr4", "--sigma-y", "nan", "-o", "y.png"],
    "degrade bad size": ["degrade", "plain.png", "--task", "sr4", "--size", "0x5", "-o", "y.png"],
    "degrade compressed sensing (not an image)": ["degrade", "plain.png", "--task", "cs4", "--size", "16x16",
                                                  "-o", "y.png"],
    "restore compressed sensing (not an image)": ["restore", "plain.png", "--task", "cs2", "--out", "o"],
    "unknown command": ["frobnicate"],
}


@pytest.mark.parametrize("args", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gives_one_error_line_exit_2_and_writes_nothing(tmp_path, args):
    write_plain_image(tmp_path / "plain.png", 17, 16)  # odd: no UNet that halves the size can take it
    (tmp_path / "notes.txt").write_text("not an image")
    before = files_under(tmp_path)
    done = ipsolve_run(*args, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipsolve: error: "), done.stderr
    assert files_under(tmp_path) == before
