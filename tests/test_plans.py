"""Validate, then act (issue 19): restore, generate and the studio's start-up refuse bad work before writing
anything (exit 2, one `ipsolve: error:` line, the tree byte for byte as it was), never write over an input
or outside --out, compare what --out holds with what they would write, and exit 1 when some files of a
folder failed."""
import csv
import errno
import json
import shutil
import socket
from pathlib import Path

import pytest

from ipsolve.cli import main
from test_cli import EXAMPLES
from _trees import tree

FAST = ["--outer", "1", "--inner", "2", "--quiet"]


def run(capsys, *args):
    """`ipsolve ARGS` in this process: (exit code, stdout, stderr lines)."""
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def refused(capsys, folder, *args) -> str:
    """Run a command that must be refused: exit 2, one error line, nothing changed; the line."""
    before = tree(folder)
    code, _, lines = run(capsys, *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ipsolve: error: "), (code, lines)
    assert tree(folder) == before
    return lines[0]


def shipped_files(root, files, measurements, sidecars=True):
    """Copies of the shipped example `files` in `root` and a folder `in` of the sr4 digit as NAME.png for
    each of `measurements` (with its sidecar unless not `sidecars`); `root`."""
    for name in files:
        shutil.copy(EXAMPLES / name, root / name)
    (root / "in").mkdir()
    for name in measurements:
        shutil.copy(EXAMPLES / "digit_sr4.png", root / "in" / f"{name}.png")
        if sidecars:
            shutil.copy(EXAMPLES / "digit_sr4.png.json", root / "in" / f"{name}.png.json")
    return root


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The shipped sr4 digit and its sidecar, and a folder `in` of three sr4 measurements a, b, c."""
    monkeypatch.chdir(tmp_path)
    return shipped_files(tmp_path, ("digit_sr4.png", "digit_sr4.png.json", "digit_inp.mask.png"), "abc")


# ---------------------------------------------------------------- outputs over inputs, confinement

@pytest.mark.parametrize("measurement", ["out/final.png", "out/preview_01_nfe002.png", "out/strip.png"])
def test_a_restore_never_replaces_its_own_input(work, capsys, measurement):
    assert run(capsys, "restore", "digit_sr4.png", *FAST, "--out", "out")[0] == 0
    line = refused(capsys, work, "restore", measurement, "--task", "deno", *FAST, "--out", "out")
    assert f"would replace the input {measurement}" in line and "--out" in line


def test_an_out_folder_with_dot_dot_parts_makes_only_the_folder_it_names(work, capsys):
    """`--out a/../run` is `run`: the run lands there and no stray `a` is made on the way."""
    assert run(capsys, "restore", "digit_sr4.png", *FAST, "--out", "a/../run")[0] == 0
    assert (work / "run" / "final.png").is_file() and not (work / "a").exists()
    assert json.loads((work / "run" / "run.json").read_text())["arguments"]["out"] == "run"


def test_a_restore_never_replaces_its_mask_or_an_input_in_the_current_folder(work, capsys):
    shutil.copy(EXAMPLES / "digit_sr4.png", work / "final.png")
    shutil.copy(EXAMPLES / "digit_sr4.png.json", work / "final.png.json")
    assert "would replace the input final.png" in refused(capsys, work, "restore", "final.png", *FAST, "--out", ".")
    shutil.copy(EXAMPLES / "digit_clean.png", work / "plain.png")
    (work / "run").mkdir()
    shutil.copy(EXAMPLES / "digit_inp.mask.png", work / "run" / "strip.png")
    line = refused(capsys, work, "restore", "plain.png", "--task", "inp_mask", "--mask", "run/strip.png", *FAST,
                   "--out", "run")
    assert "would replace the input run/strip.png" in line


def test_a_restore_never_replaces_a_file_no_ipsolve_run_wrote(work, capsys):
    (work / "out").mkdir()
    (work / "out" / "final.png").write_bytes(b"my own drawing")
    line = refused(capsys, work, "restore", "digit_sr4.png", *FAST, "--out", "out")
    assert "out/final.png was not written by an ipsolve run" in line


@pytest.mark.parametrize("name, says", [("..png", "'.' is not a plain name"), ("...png", "'..' is not a plain name"),
                                        (".hidden.png", "'.hidden' is not a plain name")])
def test_a_folder_restore_refuses_a_file_whose_name_is_not_a_plain_folder_name(work, capsys, name, says):
    shutil.copy(work / "in" / "a.png", work / "in" / name)
    assert says in refused(capsys, work, "restore", "in", *FAST, "--out", "out")


def test_a_folder_restore_writes_no_run_folder_over_its_input_folder_or_a_file(work, capsys):
    (work / "out").mkdir()
    shutil.move(work / "in", work / "out" / "a")
    for name in "bc":
        (work / "out" / "a" / f"{name}.png").unlink()
        (work / "out" / "a" / f"{name}.png.json").unlink()
    assert "would be an output folder of this run" in refused(capsys, work, "restore", "out/a", *FAST, "--out", "out")
    (work / "elsewhere").mkdir()
    (work / "elsewhere" / "a").write_text("a file where the run folder would go")
    line = refused(capsys, work, "restore", "out/a", *FAST, "--out", "elsewhere")
    assert "elsewhere/a is a file" in line


def test_a_folder_restore_never_follows_a_link_out_of_out(work, capsys):
    (work / "elsewhere").mkdir()
    (work / "out").mkdir()
    (work / "out" / "b").symlink_to(work / "elsewhere", target_is_directory=True)
    line = refused(capsys, work, "restore", "in", *FAST, "--out", "out")
    assert f"out/b leads outside out (to {work / 'elsewhere'})" in line


# ---------------------------------------------------------------- runs with other settings into one folder

def index(folder: Path) -> list[dict]:
    with open(folder / "index.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_restore_with_other_settings_is_refused_unless_overwrite(work, capsys):
    assert run(capsys, "restore", "in", "--solver", "ddnm", *FAST, "--out", "out")[0] == 0
    (work / "out" / "a" / "notes.txt").write_text("mine")
    line = refused(capsys, work, "restore", "in", "--solver", "ddrm", *FAST, "--out", "out")
    assert line == ("ipsolve: error: out holds a restore with --solver ddnm; this one is --solver ddrm: "
                    "use another --out or --overwrite")
    line = refused(capsys, work, "restore", "in", "--solver", "ddnm", "--outer", "2", "--inner", "2", "--quiet",
                   "--out", "out")
    assert "out holds a restore with --outer 1; this one is --outer 2" in line
    # same settings: resumed, every result reused
    code, out, _ = run(capsys, "restore", "in", "--solver", "ddnm", *FAST, "--out", "out")
    assert code == 0 and "0 restored, 3 reused, 0 failed" in out
    # --overwrite: the earlier run's files go (only those), the new run's come
    code, out, _ = run(capsys, "restore", "in", "--solver", "ddrm", *FAST, "--overwrite", "--out", "out")
    assert code == 0 and "3 restored, 0 reused, 0 failed" in out, out
    assert (work / "out" / "a" / "notes.txt").read_text() == "mine"
    assert {json.loads((work / "out" / name / "run.json").read_text())["solver"] for name in "abc"} == {"nested(ddrm)"}
    assert [row["status"] for row in index(work / "out")] == ["done"] * 3


def test_overwrite_removes_only_what_the_earlier_run_recorded(work, capsys):
    assert run(capsys, "restore", "in", "--seed", "1", *FAST, "--out", "out")[0] == 0
    (work / "in" / "c.png").unlink()
    (work / "in" / "c.png.json").unlink()
    (work / "out" / "c" / "preview_09_nfe999.png").write_bytes(b"not recorded by the run")
    code, _, _ = run(capsys, "restore", "in", "--seed", "2", *FAST, "--overwrite", "--out", "out")
    assert code == 0
    assert sorted(p.name for p in (work / "out" / "c").iterdir()) == ["preview_09_nfe999.png"]
    assert [row["source"] for row in index(work / "out")] == ["a.png", "b.png"]


def test_a_file_restore_with_other_settings_is_refused_unless_overwrite(work, capsys):
    assert run(capsys, "restore", "digit_sr4.png", *FAST, "--out", "out")[0] == 0
    line = refused(capsys, work, "restore", "digit_sr4.png", *FAST, "--seed", "3", "--out", "out")
    assert line.endswith("out holds a restore with --seed 0; this one is --seed 3: use another --out or --overwrite")
    shutil.copy(EXAMPLES / "digit_sr4.png", work / "other.png")
    shutil.copy(EXAMPLES / "digit_sr4.png.json", work / "other.png.json")
    assert f"this one is MEASUREMENT {work / 'other.png'}" in refused(capsys, work, "restore", "other.png", *FAST,
                                                                      "--out", "out")
    assert run(capsys, "restore", "digit_sr4.png", *FAST, "--budget", "2", "--out", "out")[0] == 0  # the same
    assert run(capsys, "restore", "digit_sr4.png", *FAST, "--seed", "3", "--overwrite", "--out", "out")[0] == 0
    assert json.loads((work / "out" / "run.json").read_text())["seed"] == 3
    line = refused(capsys, work, "generate", "--outer", "1", "--inner", "2", "--n", "1", "--quiet", "--out", "out")
    assert "out holds a restore; this one is a generation: use another --out or --overwrite" in line


def test_a_generation_with_other_settings_is_refused_unless_overwrite(work, capsys):
    flags = ["--outer", "1", "--inner", "2", "--quiet", "--out", "out"]
    assert run(capsys, "generate", *flags, "--n", "1")[0] == 0
    assert "holds a generation with --n 1; this one is --n 2" in refused(capsys, work, "generate", *flags, "--n", "2")
    assert run(capsys, "generate", *flags, "--n", "2", "--overwrite")[0] == 0
    assert json.loads((work / "out" / "run.json").read_text())["arguments"]["n"] == 2


# ---------------------------------------------------------------- exit status of a folder restore

def break_every_file(folder: Path):
    for path in folder.glob("*.png"):
        path.write_text("not an image")


def drop_every_sidecar(folder: Path):
    for path in folder.glob("*.png.json"):
        path.unlink()


@pytest.mark.parametrize("spoil, flags, says", [
    (break_every_file, [], "none of the 3 measurements of in can be restored (a.png: "),
    (drop_every_sidecar, [], "none of the 3 measurements of in can be restored (a.png: in/a.png has no sidecar"),
    (lambda folder: None, ["--task", "deno"], "(a.png: --task deno disagrees with in/a.png.json"),
])
def test_a_folder_restore_in_which_nothing_can_succeed_is_refused_before_writing(work, capsys, spoil, flags, says):
    spoil(work / "in")
    assert says in refused(capsys, work, "restore", "in", *flags, *FAST, "--out", "out")


def test_a_folder_restore_in_which_some_failed_exits_1_and_says_how_many(work, capsys):
    (work / "in" / "b.png").write_text("not an image")
    code, out, lines = run(capsys, "restore", "in", *FAST, "--out", "out")
    assert code == 1 and lines == ["ipsolve: 1 of 3 measurements failed: out/index.csv says why"]
    assert "3 measurements, 2 restored, 0 reused, 1 failed" in out
    assert index(work / "out")[1]["status"].startswith("failed: ")


# ---------------------------------------------------------------- one budget rule

@pytest.mark.parametrize("flags, says", [
    (["--budget", "1000", "--outer", "2", "--inner", "2"], "more than 2 outer x 2 inner steps = 4 NFE"),
    (["--budget", "1", "--outer", "2", "--inner", "5"], "smaller than one inner run (5 NFE)"),
])
def test_generate_takes_restores_budget_rule(work, capsys, flags, says):
    assert says in refused(capsys, work, "generate", *flags, "--n", "1", "--quiet", "--out", "out")


# ---------------------------------------------------------------- studio start-up

def test_the_studio_refuses_a_port_out_of_range_in_one_line(work, capsys):
    assert "--port: must be a port number from 1 to 65535, got '70000'" in refused(capsys, work, "studio", "--port",
                                                                                   "70000")


def test_the_studio_refuses_a_port_in_use_without_naming_the_other_page(work, capsys):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        line = refused(capsys, work, "studio", "--port", port)
    assert f"--port {port} is in use on 127.0.0.1 by another program" in line and "http" not in line


def test_the_studio_refuses_a_host_it_cannot_find(work, capsys):
    line = refused(capsys, work, "studio", "--host", "no-such-host.invalid")
    assert "--host no-such-host.invalid: cannot find this address" in line and "empty port" not in line


# ---------------------------------------------------------------- a full disk

def test_run_json_names_the_last_preview_on_disk_when_its_record_cannot_be_written(work, capsys, monkeypatch):
    """The disk is full while preview 1 is on it: run.json cannot say so, so preview 1 goes again."""
    import ipsolve.imageio

    real_replace = ipsolve.imageio.os.replace

    def replace(source, target):
        if Path(target).name == "run.json" and (work / "out" / "preview_01_nfe002.png").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(ipsolve.imageio.os, "replace", replace)
    code, _, lines = run(capsys, "restore", "digit_sr4.png", "--outer", "3", "--inner", "2", "--quiet", "--out", "out")
    assert code == 2 and lines == ["ipsolve: error: out/run.json: No space left on device"]
    record = json.loads((work / "out" / "run.json").read_text())
    assert not list((work / "out").glob("preview_*.png")) and not list((work / "out").glob(".*.tmp*"))
    assert record["previews"] == [] and record["nfe"] == 0 and record["status"] == "failed"


# ---------------------------------------------------------------- one plan per command

def test_every_plan_and_request_is_immutable():
    import dataclasses

    from ipsolve.services.degrade_file import DegradePlan
    from ipsolve.services.folder_restore import FolderRestorePlan
    from ipsolve.services.generate_run import GeneratePlan, GenerateRequest
    from ipsolve.services.restore_request import RestorePlan, RestoreRequest

    for kind in (RestoreRequest, RestorePlan, FolderRestorePlan, DegradePlan, GenerateRequest, GeneratePlan):
        assert kind.__dataclass_params__.frozen, kind
    with pytest.raises(dataclasses.FrozenInstanceError):
        RestoreRequest(measurement="m.png", out="out").out = "elsewhere"


def test_a_restore_plan_writes_nothing_and_running_it_writes_the_run_folder(work):
    from ipsolve.services.restore_request import RestorePlan, RestoreRequest, plan_restore, run_restore_plan

    before = tree(work)
    plan = plan_restore(RestoreRequest(measurement="digit_sr4.png", outer=1, inner=2, out="out", quiet=True))
    assert isinstance(plan, RestorePlan) and plan.inputs.marks == [2] and tree(work) == before
    result = run_restore_plan(plan)
    assert result.nfe == 2 and (work / "out" / "final.png").is_file()
