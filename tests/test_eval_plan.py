"""`ipsolve eval` plans before it writes: what --out holds, names that become paths, links out of --out,
outputs over inputs, the budget rule shared with restore, exit codes 0 / 1 / 2.

Every test runs the command line in-process on two or three digits with the exact Gaussian prior.
"""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.cli import main
from ipsolve.config import load_eval_config
from ipsolve.imageio import save_image
from ipsolve.restore import check_schedule
from _trees import tree

CONFIG = {"model": "gaussian:1x32x32", "seed": 1, "batch_size": 2, "budgets": [2, 4],
          "tasks": [{"name": "deno", "operator": "deno", "sigma_y_pixel": 0.05}],
          "methods": {"ddrm": {"eta": 0.85}}, "metrics": {"lpips": None, "fid": None}}


@pytest.fixture
def world(tmp_path):
    images = torch.load(Path(__file__).parent / "data" / "mnist_heldout16.pt", weights_only=True)["images"]
    (tmp_path / "data").mkdir()
    for i in range(2):
        save_image(images[i].float() / 255, tmp_path / "data" / f"digit_{i}.png")
    return tmp_path


def run_eval(world: Path, capsys, *extra, **changes) -> tuple[int, str]:
    """`ipsolve eval` of CONFIG with `changes` into world/out; (exit code, stderr)."""
    path = world / "config.yml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    capsys.readouterr()
    code = main(["eval", "--config", str(path), "--data", str(world / "data"), "--out", str(world / "out"), *extra])
    return code, capsys.readouterr().err


def test_other_settings_are_refused_naming_the_difference_and_nothing_changes(world, capsys):
    assert run_eval(world, capsys)[0] == 0
    before = tree(world)
    code, err = run_eval(world, capsys, methods={"ddrm": {"eta": 0.2}})
    assert code == 2 and len(err.splitlines()) == 1
    assert "other settings (methods.ddrm.options.eta is 0.85 there, 0.2 here)" in err and "--overwrite" in err
    (world / "config.yml").write_text(yaml.safe_dump(CONFIG))
    assert tree(world) == before
    code, err = run_eval(world, capsys, budgets=[2])
    assert code == 2 and "budgets is [2, 4] there, [2] here" in err


def test_overwrite_removes_only_what_the_earlier_evaluation_wrote(world, capsys):
    assert run_eval(world, capsys, budgets=[2, 4])[0] == 0
    out = world / "out"
    mine = {out / "notes.txt": "my notes", out / "deno" / "mine.txt": "about deno",
            out / "deno" / "ddrm" / "nfe004" / "look.txt": "this one", out / "clean" / "README": "mine too",
            world / "beside.txt": "beside the folder"}
    for path, text in mine.items():
        path.write_text(text)
    code, _ = run_eval(world, capsys, "--overwrite", budgets=[2], methods={"ddrm": {"eta": 0.5}})
    assert code == 0
    assert all(path.read_text() == text for path, text in mine.items())
    assert not list((out / "deno" / "ddrm" / "nfe004").glob("0*"))  # the earlier results of budget 4: gone
    manifest = json.loads((out / "evaluation.json").read_text())
    assert manifest["settings"]["methods"][0]["options"]["eta"] == 0.5 and manifest["tasks"] == ["deno"]
    record = json.loads((out / "deno" / "ddrm" / "nfe002" / "00000.json").read_text())
    assert record["budget"] == 2


def test_overwrite_never_follows_a_path_like_name_recorded_by_an_older_run(world, capsys):
    """A manifest of an older ipsolve that let a task be named `.` or `..`: --overwrite removes nothing
    through those names (the old code removed the whole folder, or the one above it)."""
    out = world / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "evaluation.json").write_text(json.dumps({"config": "old", "tasks": [".", "..", "a/b"]}))
    before = {p: p.read_bytes() for p in world.rglob("*") if p.is_file() and p.name != "evaluation.json"}
    code, err = run_eval(world, capsys, "--overwrite")
    assert code == 0, err
    assert all(p.read_bytes() == data for p, data in before.items() if p.name != "config.yml")


@pytest.mark.parametrize("name", ["..", ".", "a/b", ".hidden"])
def test_a_task_named_like_a_path_is_refused_before_anything_is_written(world, capsys, name):
    before = tree(world)
    code, err = run_eval(world, capsys, tasks=[{"name": name, "operator": "deno"}])
    assert code == 2 and "tasks[0].name must be a plain name" in err and repr(name) in err
    (world / "config.yml").unlink()
    assert tree(world) == before


@pytest.mark.parametrize("mine", ["table.md", "clean/notes.txt", "deno/draft.png"])
def test_a_user_s_files_in_an_output_folder_no_evaluation_made_are_never_written_over(world, capsys, mine):
    (world / "out" / mine).parent.mkdir(parents=True, exist_ok=True)
    (world / "out" / mine).write_text("mine")
    (world / "config.yml").write_text(yaml.safe_dump(CONFIG))
    before = tree(world)
    code, err = run_eval(world, capsys)
    assert code == 2 and "was not written by an evaluation" in err and mine.split("/")[0] in err
    assert tree(world) == before


def test_a_link_out_of_the_output_folder_is_refused(world, capsys):
    elsewhere = world / "elsewhere"
    elsewhere.mkdir()
    (world / "out").mkdir()
    (world / "out" / "deno").symlink_to(elsewhere, target_is_directory=True)
    code, err = run_eval(world, capsys)
    assert code == 2 and f"outside the output folder {(world / 'out').resolve()}" in err
    assert not list(elsewhere.iterdir()) and sorted(os.listdir(world / "out")) == ["deno"]


@pytest.mark.parametrize("inside", ["clean", "deno/ddrm/nfe002"])
def test_data_inside_a_folder_the_evaluation_writes_is_refused(world, capsys, inside):
    data = world / "out" / inside
    data.mkdir(parents=True)
    for image in (world / "data").iterdir():
        image.rename(data / image.name)
    path = world / "config.yml"
    path.write_text(yaml.safe_dump(CONFIG))
    before = tree(world)
    code = main(["eval", "--config", str(path), "--data", str(data), "--out", str(world / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "would be overwritten" in err and "--data" in err
    assert tree(world) == before


def test_a_budget_above_outer_x_inner_is_refused_with_restore_s_rule(world):
    config = world / "config.yml"
    config.write_text(yaml.safe_dump({**CONFIG, "methods": {"nested": {"splits": {2: [1, 2], 4: [1, 2]}}}}))
    with pytest.raises(ValueError) as refused:
        load_eval_config(config)
    with pytest.raises(ValueError) as restore_says:
        check_schedule(1, 2, 4)
    assert str(refused.value).endswith(f"methods.nested.splits.4 and budgets[1]: {restore_says.value}")


def test_a_budget_above_the_model_s_steps_is_refused_before_writing(world, capsys):
    code, err = run_eval(world, capsys, budgets=[2, 1001])
    assert code == 2 and "budgets[1] is 1001 NFE, more than the 1000 diffusion steps of the model" in err
    assert not (world / "out").exists()


def test_a_method_given_twice_is_refused(world, capsys):
    (world / "config.yml").write_text("model: gaussian:1x32x32\ntasks: [deno]\nbudgets: [2]\n"
                                      "methods:\n  ddrm: {eta: 0.85}\n  ddrm: {eta: 0.2}\n")
    code = main(["eval", "--config", str(world / "config.yml"), "--data", str(world / "data"),
                 "--out", str(world / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "line 6" in err and "the key 'ddrm' is given twice (first on line 5)" in err
    assert not (world / "out").exists()


def test_exit_1_when_some_images_cannot_be_read_and_the_line_says_how_many(world, capsys):
    (world / "data" / "digit_9.png").write_bytes(b"not an image")
    code, err = run_eval(world, capsys, "--no-fid")
    assert code == 1
    assert "1 of 3 images could not be read and were left out" in err and "failed.csv" in err
    failed = (world / "out" / "failed.csv").read_text().splitlines()
    assert failed[0] == "index,source,reason" and failed[1].startswith("2,digit_9.png,")
    rows = (world / "out" / "per_image.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 * 2 and not any("digit_9" in row for row in rows)
    (world / "data" / "digit_9.png").unlink()
    code, err = run_eval(world, capsys, "--no-fid")  # the same settings: resumed, and now all good
    assert code == 0 and not (world / "out" / "failed.csv").exists()


def test_exit_1_when_no_image_can_be_read(world, capsys):
    for image in (world / "data").iterdir():
        image.write_bytes(b"broken")
    code, err = run_eval(world, capsys)
    assert code == 1 and "2 of 2 images could not be read" in err
    assert len((world / "out" / "failed.csv").read_text().splitlines()) == 3
