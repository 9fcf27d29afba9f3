"""Results a user can trust from the command line: arguments used or refused, sidecars checked, outputs
never mixed or half-written, work that cannot fit refused up front, one line for every bad input."""
import errno
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import degradations
from ipsolve.cli import main
from ipsolve.measurement import write_measurement
from ipsolve.imageio import load_image, save_image
from test_cli import EXAMPLES, ENV, command, files_under, ipsolve_run, previews_in


@pytest.fixture
def folder(tmp_path):
    """The shipped clean digit, an sr4 measurement with its sidecar, an inpainting one, a plain image."""
    shutil.copy(EXAMPLES / "digit_clean.png", tmp_path / "digit.png")
    for name in ("digit_sr4.png", "digit_sr4.png.json", "digit_inp.png", "digit_inp.png.json",
                 "digit_inp.mask.png"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    save_image(torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0)), tmp_path / "plain.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(tmp_path / "half.png")
    mask[0, 0] = 128
    Image.fromarray(mask).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((2048, 2048), np.uint8)).save(tmp_path / "huge.png")
    clean = load_image(tmp_path / "digit.png")[None] * 2 - 1
    for task in ("deblur_gauss+inp", "saturate"):
        op = degradations.make(task, channels=1, image_size=(32, 32), seed=0)
        write_measurement(tmp_path / f"{task}.png", op.H(clean), op, sigma_y=0.0)
    (tmp_path / "bad.yml").write_text("model: embedded\ntasks: [deno\n")
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    return tmp_path


def edit_sidecar(path: Path, **sigma):
    sidecar = json.loads(path.read_text())
    sidecar["sigma_y"].update(sigma)
    path.write_text(json.dumps(sidecar))


SIDECAR_FAULTS = {  # measurement, what to break beside it → what the error line must say
    "nan sigma": ("digit_sr4.png", lambda f: edit_sidecar(f / "digit_sr4.png.json", model=float("nan"),
                                                          pixel=float("nan")), "finite"),
    "negative sigma": ("digit_sr4.png", lambda f: edit_sidecar(f / "digit_sr4.png.json", model=-0.1, pixel=-0.05),
                       "finite number >= 0"),
    "units disagree": ("digit_sr4.png", lambda f: edit_sidecar(f / "digit_sr4.png.json", model=0.1, pixel=0.1),
                       "disagree"),
    "mask file missing": ("digit_inp.png", lambda f: (f / "digit_inp.mask.png").unlink(), "is missing"),
    "mask file replaced": ("digit_inp.png", lambda f: shutil.copy(f / "half.png", f / "digit_inp.mask.png"),
                           "is not the mask"),
    "mask file grey": ("digit_inp.png", lambda f: shutil.copy(f / "grey.png", f / "digit_inp.mask.png"),
                       "not a binary mask"),
}

BAD_INPUTS = {  # arguments → what the one error line must say
    "task disagrees with sidecar": (["restore", "digit_sr4.png", "--task", "sr2"], "--task sr2 disagrees"),
    "sigma disagrees with sidecar": (["restore", "digit_sr4.png", "--sigma-y", "0.2"], "--sigma-y 0.2 disagrees"),
    "mask disagrees with sidecar": (["restore", "digit_inp.png", "--mask", "half.png"], "--mask half.png disagrees"),
    "no sidecar, no task": (["restore", "plain.png"], "give --task"),
    "no sidecar, inpainting without mask": (["restore", "plain.png", "--task", "inp"], "needs --mask"),
    "grey --mask": (["restore", "plain.png", "--task", "inp_mask", "--mask", "grey.png"], "not a binary mask"),
    "budget above outer x inner": (["restore", "digit_sr4.png", "--outer", "2", "--inner", "3", "--budget", "7"],
                                   "more than 2 outer x 3 inner"),
    "inner above the training timesteps": (["restore", "digit_sr4.png", "--outer", "1", "--inner", "1001"],
                                           "more than the model's 1000 training timesteps"),
    "outer a million": (["restore", "digit_sr4.png", "--outer", "1000000", "--inner", "1000000"], "--outer 1000000"),
    "image too large for memory": (["restore", "huge.png", "--task", "deno"], "usable here"),
    "ddrm on a composition": (["restore", "deblur_gauss+inp.png"], "ddrm needs an operator with an SVD"),
    "pigdm on a nonlinear sensor": (["restore", "saturate.png", "--solver", "pigdm"], "only dps takes it"),
    "an option the solver does not take": (["restore", "digit_sr4.png", "--solver", "ddnm", "--eta-b", "0.5"],
                                           "--solver ddnm takes no --eta-b"),
    "a weight for another solver": (["restore", "digit_sr4.png", "--weight", "paper"],
                                    "--solver ddrm takes no --weight"),
    "an unknown weight": (["restore", "digit_sr4.png", "--solver", "pigdm", "--weight", "papers"],
                          "argument --weight: invalid choice: 'papers'"),
    "--schedule with --vanilla": (["restore", "digit_sr4.png", "--vanilla", "--schedule", "paper"],
                                  "--schedule is for nested runs"),
    "seed overflow": (["restore", "digit_sr4.png", "--seed", str(2**70)], "--seed"),
    "device tpu": (["restore", "digit_sr4.png", "--device", "tpu"], "cpu, cuda or cuda:N"),
    "corrupt checkpoint": (["restore", "digit_sr4.png", "--model", "broken.ckpt"], "corrupt"),
    "degrade onto its source": (["degrade", "digit.png", "--task", "sr4", "-o", "digit.png"], "replace the input"),
    "degrade onto its mask": (["degrade", "digit.png", "--task", "inp_mask", "--mask", "half.png", "-o", "half.png"],
                              "replace the input"),
    "degrade inp_mask without mask": (["degrade", "digit.png", "--task", "inp_mask", "-o", "y.png"], "needs --mask"),
    "degrade seed overflow": (["degrade", "digit.png", "--task", "sr4", "--seed", str(2**64), "-o", "y.png"],
                              "--seed"),
    "generate 100000 candidates": (["generate", "--n", "100000"], "usable here"),
    "generate a million outer steps": (["generate", "--outer", "1000000"], "training timesteps"),
    "eval malformed yaml": (["eval", "--config", "bad.yml", "--data", "."], "not valid YAML (line 3"),
    "eval device cuda": (["eval", "--config", "bad.yml", "--data", ".", "--device", "cuda"], "no CUDA device"),
    "eval device cuda:7": (["eval", "--config", "bad.yml", "--data", ".", "--device", "cuda:7"], "no CUDA device"),
    "eval device tpu": (["eval", "--config", "bad.yml", "--data", ".", "--device", "tpu"], "cpu, cuda or cuda:N"),
}


def assert_one_line_and_nothing_written(done, folder, before, says):
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipsolve: error: ") and says in lines[0], done.stderr
    assert files_under(folder) == before


@pytest.mark.parametrize("args, says", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_exit_2_and_nothing_written(folder, args, says):
    before = files_under(folder)
    out = ["--out", "run"] if args[0] in ("restore", "generate", "eval") else []
    assert_one_line_and_nothing_written(ipsolve_run(*args, *out, cwd=folder), folder, before, says)


@pytest.mark.parametrize("measurement, fault, says", SIDECAR_FAULTS.values(), ids=SIDECAR_FAULTS.keys())
def test_broken_sidecars_are_one_line_exit_2_and_leave_no_folder(folder, measurement, fault, says):
    fault(folder)
    before = files_under(folder)
    done = ipsolve_run("restore", measurement, "--out", "run", cwd=folder)
    assert_one_line_and_nothing_written(done, folder, before, says)


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_output_folder_name_is_refused(folder, out):
    before = files_under(folder)
    done = ipsolve_run("restore", "digit_sr4.png", "--out", out, cwd=folder)
    assert done.returncode == 2 and "empty" in done.stderr and files_under(folder) == before


def test_arguments_that_agree_with_the_sidecar_are_used_and_recorded(folder):
    done = ipsolve_run("restore", "digit_inp.png", "--task", "inp", "--mask", "digit_inp.mask.png", "--outer", "1",
                       "--inner", "2", "--quiet", "--out", "run", cwd=folder)
    assert done.returncode == 0, done.stderr
    record = json.loads((folder / "run" / "run.json").read_text())
    assert record["task"]["name"] == "inp" and record["mask"] == str((folder / "digit_inp.mask.png").resolve())
    assert record["status"] == "done" and record["sigma_y"]["pixel"] == json.loads(
        (folder / "digit_inp.png.json").read_text())["sigma_y"]["pixel"]


def test_sigterm_ends_like_ctrl_c_and_a_second_run_into_the_folder_is_refused(folder):
    process = subprocess.Popen(command("restore", "digit_sr4.png", "--outer", 200, "--inner", 5,
                                       "--schedule", "paper", "--out", "run"),
                               cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not previews_in(folder / "run") and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    second = ipsolve_run("restore", "digit_inp.png", "--outer", 1, "--inner", 2, "--out", "run", cwd=folder)
    assert second.returncode == 2 and "in use by another ipsolve run" in second.stderr, second.stderr
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    record = json.loads((folder / "run" / "run.json").read_text())
    assert record["interrupted"] and record["status"] == "interrupted" and record["measurement"].endswith("digit_sr4.png")
    last = previews_in(folder / "run")[-1]
    assert len(record["previews"]) == len(previews_in(folder / "run")) and record["previews"][-1]["file"] == last.name
    torch.testing.assert_close(load_image(folder / "run" / "final.png"), load_image(last))


def test_a_full_disk_is_one_line_naming_the_file_and_run_json_says_how_far_it_got(folder, monkeypatch, capsys):
    import ipsolve.imageio

    real_replace = ipsolve.imageio.os.replace

    def replace(source, target):
        if Path(target).name.startswith("preview_02"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(ipsolve.imageio.os, "replace", replace)
    monkeypatch.chdir(folder)
    code = main(["restore", "digit_sr4.png", "--outer", "3", "--inner", "2", "--quiet", "--out", "run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == "ipsolve: error: run/preview_02_nfe004.png: No space left on device"
    record = json.loads((folder / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]
    assert [p["nfe"] for p in record["previews"]] == [2] and record["nfe"] == 2
    assert not list((folder / "run").glob(".*.tmp*"))  # no half-written file left behind


def test_the_isotropic_smoke_prior_restores_a_colour_image_at_64x64(folder):
    made = ipsolve_run("degrade", "digit.png", "--task", "sr4", "--size", "64x64", "-o", "big.png", cwd=folder)
    assert made.returncode == 0, made.stderr
    Image.open(folder / "big.png").convert("RGB").save(folder / "big_rgb.png")
    done = ipsolve_run("restore", "big_rgb.png", "--task", "sr4", "--model", "gaussian:3x64x64", "--outer", 2,
                       "--inner", 3, "--quiet", "--out", "run", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert load_image(folder / "run" / "final.png").shape == (3, 64, 64)


@pytest.mark.parametrize("measurement, solver, options", [
    ("digit_sr4.png", "ddnm", {}), ("deblur_gauss+inp.png", "pigdm", {}), ("saturate.png", "dps", {}),
    ("digit_inp.png", "pigdm", {"weight": "paper"}), ("digit_inp.png", "pigdm", {"weight": "score"})])
def test_each_solver_restores_from_the_command_line_as_the_library_does(folder, measurement, solver, options):
    """`--solver S --vanilla [--weight W]` writes the x̂₀ of solvers.S (weight=W) run on the same grid with
    the same seed, and the options restore gives S on that task (DPS's tuned ones); run.json records the
    option as given."""
    import solvers
    from ipsolve.config import restore_defaults
    from ipsolve.measurement import read_measurement
    from ipsolve.models import load_model

    flags = [item for key, value in options.items() for item in (f"--{key}", value)]
    done = ipsolve_run("restore", measurement, "--solver", solver, *flags, "--vanilla", "--outer", 1, "--inner", 3,
                       "--seed", 5, "--quiet", "--out", "run", cwd=folder)
    assert done.returncode == 0, done.stderr
    record = json.loads((folder / "run" / "run.json").read_text())
    assert record["solver"] == solver and record["nfe"] == 3
    assert all(record["arguments"][key] == value for key, value in options.items())
    read = read_measurement(folder / measurement)
    measured = {"forward": read.op} if solver == "dps" else {"op": read.op, "sigma_y": read.sigma_y}

    def library(**given):
        with torch.no_grad():
            x0 = getattr(solvers, solver)(load_model("embedded"), y=read.y, generator=torch.Generator().manual_seed(5),
                                          timesteps=solvers.plain_ddrm_timesteps(3), **measured,
                                          **restore_defaults(solver, read.op.name), **given)
        return ((x0[0] + 1) / 2).clamp(0, 1).mul(255).round() / 255
    written = load_image(folder / "run" / "final.png")
    torch.testing.assert_close(written, library(**options), rtol=0, atol=1.5 / 255)
    if options:  # the option changed the answer: it was not ignored
        assert (written - library()).abs().max() > 3 / 255
