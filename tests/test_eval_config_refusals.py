"""Every bad eval config is refused before anything is written (a property over generated mutations).

From one valid small config, every mutation below — a required key removed, a value replaced by each
wrong type, a number out of range, NaN or ±inf, a name that would be a path, a key given twice, a
budget the model or the nested run cannot spend — must give exit code 2, exactly one `ipsolve: error:`
line naming the key, and leave the folder holding the config, the data and --out byte for byte as it
was (no lock, no empty folders). The CLI's `main` is called in-process; a few cases also run as a
subprocess, to see that nothing but the one line reaches stderr. Last, hypothesis puts any value at any
key: the config is accepted, or refused with one line naming the key — never a traceback.
"""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest
import torch
import yaml
from hypothesis import strategies

from ipsolve.cli import main
from ipsolve.config import load_eval_config
from ipsolve.imageio import save_image
from _trees import tree

VALID = {"model": "gaussian:1x32x32", "seed": 3, "batch_size": 2, "samples": 2,
         "tasks": ["deno", {"name": "inp30", "operator": "inp", "sigma_y_pixel": 0.05, "seed": 0}],
         "budgets": [2, 4],
         "methods": {"ddrm": {"eta": 0.85}, "nested": {"inner_steps": 2, "eta_outer": 0.0}},
         "metrics": {"lpips": None, "fid": None}}

# the kind of each key path of VALID: which wrong values and out-of-range numbers it gets
KINDS = {"model": "text", "seed": "seed", "batch_size": "count", "samples": "count", "tasks": "list",
         "tasks[0]": "name",
         "tasks[1]": "mapping", "tasks[1].name": "name", "tasks[1].operator": "text",
         "tasks[1].sigma_y_pixel": "unit", "tasks[1].seed": "seed", "budgets": "list", "budgets[0]": "count",
         "methods": "mapping", "methods.ddrm": "mapping or null", "methods.ddrm.eta": "unit",
         "methods.nested": "mapping or null", "methods.nested.inner_steps": "count",
         "methods.nested.eta_outer": "non-negative", "metrics": "mapping or null", "metrics.lpips": "choice",
         "metrics.fid": "choice"}
REQUIRED = ("model", "tasks", "budgets", "methods", "tasks[1].operator")
WRONG_TYPES = {  # a value of every other shape
    "text": [3, 2.5, True, ["x"], {"a": 1}, None],
    "name": [3, 2.5, True, ["deno"], {"a": 1}, None],
    "seed": [2.5, "3", True, [3], {"a": 3}, None],
    "count": [2.5, "2", True, [2], {"a": 2}, None],
    "unit": ["0.5", True, [0.5], {"a": 0.5}, None],
    "non-negative": ["0", True, [0.0], {"a": 0}, None],
    "list": [3, "deno", True, {"a": 1}, None],
    "mapping": [3, "ddrm", True, ["ddrm"], None],
    "mapping or null": [3, "eta", True, ["eta"]],
    "choice": [3, True, ["alex"], {"a": 1}, "squeeze"],
}
OUT_OF_RANGE = {
    "seed": [-1, 2**63],
    "count": [0, -1],
    "unit": [-0.1, 1.5, 2.0, math.nan, math.inf, -math.inf],
    "non-negative": [-0.5, -1, math.nan, math.inf],
}
PATH_LIKE = ["..", ".", "a/b", ".hidden", "a\\b", "../escape", "/abs"]


def get_parent(config: dict, path: str):
    """(the container holding `path`, its last key or index)."""
    parts = path.replace("[", ".[").split(".")
    node = config
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    return node, int(last[1:-1]) if last.startswith("[") else last


def replaced(path: str, value) -> dict:
    config = copy.deepcopy(VALID)
    node, key = get_parent(config, path)
    node[key] = value
    return config


def removed(path: str) -> dict:
    config = copy.deepcopy(VALID)
    node, key = get_parent(config, path)
    del node[key]
    return config


def renamed_method(old: str, new) -> dict:
    config = copy.deepcopy(VALID)
    config["methods"] = {new if name == old else name: body for name, body in config["methods"].items()}
    return config


def mutations():
    """(case id, config dict or YAML text, what the error line must name)."""
    for path in REQUIRED:
        yield f"without {path}", removed(path), path
    for path, kind in KINDS.items():
        for value in WRONG_TYPES[kind]:
            yield f"{path} = {value!r}", replaced(path, value), path
        for value in OUT_OF_RANGE.get(kind, []):
            yield f"{path} = {value!r}", replaced(path, value), path
    for name in PATH_LIKE:
        yield f"task named {name!r}", replaced("tasks[0]", name), "tasks[0]"
        yield f"inline task named {name!r}", replaced("tasks[1].name", name), "tasks[1].name"
        yield f"inline task of operator {name!r}", replaced("tasks[1]", {"operator": name}), "tasks[1]"
        yield f"method named {name!r}", renamed_method("nested", name), "methods."
    text = yaml.safe_dump(VALID, sort_keys=False)
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every `key:` line given twice in its mapping
        if not line.lstrip().startswith("-"):
            key = line.split(":")[0].strip()
            yield f"{key} twice (line {i + 1})", "\n".join(lines[:i + 1] + [line] + lines[i + 1:]) + "\n", \
                f"the key {key!r} is given twice"
    semantic = {  # shapes that are right, values that cannot run
        "methods: {}": (dict(VALID, methods={}), "methods"),
        "tasks: []": (dict(VALID, tasks=[]), "tasks"),
        "budgets: []": (dict(VALID, budgets=[]), "budgets"),
        "a budget twice": (dict(VALID, budgets=[2, 4, 2]), "budgets[2]"),
        "two tasks of one name": (dict(VALID, tasks=["deno", {"operator": "deno"}]), "tasks[1]"),
        "unknown top key": (dict(VALID, budget=[2]), "budget"),
        "unknown method key": (replaced("methods.ddrm", {"eta": 0.5, "etaa": 1}), "methods.ddrm.etaa"),
        "an option of another solver": (replaced("methods.ddrm", {"step_size": 1.0}), "methods.ddrm.step_size"),
        "unknown task key": (replaced("tasks[1]", {"operator": "inp", "sigma": 0.1}), "tasks[1].sigma"),
        "unknown metrics key": (replaced("metrics", {"psnr": True}), "metrics.psnr"),
        "unknown solver": (replaced("methods.ddrm", {"solver": "ddpm"}), "methods.ddrm.solver"),
        "a method naming no solver": (renamed_method("ddrm", "mine"), "methods.mine"),
        "nested: maybe": (replaced("methods.nested", {"inner_steps": 2, "nested": "yes"}), "methods.nested.nested"),
        "no inner_steps nor splits": (replaced("methods.nested", {}), "methods.nested"),
        "both inner_steps and splits": (
            replaced("methods.nested", {"inner_steps": 2, "splits": {2: [1, 2], 4: [2, 2]}}), "methods.nested"),
        "inner_steps not dividing a budget": (replaced("methods.nested.inner_steps", 3), "methods.nested.inner_steps"),
        "inner_steps above the budgets": (replaced("methods.nested.inner_steps", 8), "methods.nested.inner_steps"),
        "a budget above outer x inner": (replaced("methods.nested", {"splits": {2: [1, 2], 4: [1, 2]}}),
                                         "methods.nested.splits.4"),
        "a split for no budget": (replaced("methods.nested", {"splits": {2: [1, 2], 4: [2, 2], 8: [4, 2]}}),
                                  "methods.nested.splits.8"),
        "a budget without a split": (replaced("methods.nested", {"splits": {2: [1, 2]}}), "methods.nested.splits"),
        "a split of three numbers": (replaced("methods.nested", {"splits": {2: [1, 2, 3], 4: [2, 2]}}),
                                     "methods.nested.splits.2"),
        "a split of zero outer steps": (replaced("methods.nested", {"splits": {2: [0, 2], 4: [2, 2]}}),
                                        "methods.nested.splits.2[0]"),
        "a budget above the model's steps": (dict(VALID, budgets=[2, 2000], methods={"ddrm": {}}), "budgets[1]"),
        "a nested run above the model's steps": (dict(VALID, budgets=[2, 2000], methods={"nested": {"inner_steps": 2}}),
                                                 "methods.nested"),
        "an operator that does not exist": (replaced("tasks[1].operator", "blur_nope"), "task inp30"),
        "params the operator does not take": (replaced("tasks[1]", {"operator": "inp", "params": {"bogus": 1}}),
                                              "task inp"),
        "a task file that does not exist": (replaced("tasks[0]", "missing.yml"), "missing.yml"),
        "a task name that is not packaged": (replaced("tasks[0]", "nope"), "no task config named 'nope'"),
        "an image_shape of two numbers": (dict(VALID, image_shape=[1, 32]), "image_shape"),
        "an image_shape of other channels": (dict(VALID, image_shape=[3, 32, 32]), "image_shape is [3, 32, 32]"),
        "an image_shape of another size": (dict(VALID, image_shape=[1, 24, 24]), "cannot take 24x24 images"),
        "a model that does not exist": (dict(VALID, model="no_such_model"), "no_such_model"),
        "a config that is a list": ([VALID], "mapping"),
    }
    for name, (config, names) in semantic.items():
        yield name, config, names


CASES = list(mutations())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder holding the data (two digits) and a user's own notes beside where --out goes."""
    folder = tmp_path_factory.mktemp("world")
    images = torch.load(Path(__file__).parent / "data" / "mnist_heldout16.pt", weights_only=True)["images"]
    (folder / "data").mkdir()
    for i in range(2):
        save_image(images[i].float() / 255, folder / "data" / f"digit_{i}.png")
    (folder / "notes.txt").write_text("mine\n")
    return folder


def refuse(world: Path, config, capsys, *extra) -> str:
    """Run `ipsolve eval` on `config` (a dict or YAML text); assert exit 2, one error line, the tree
    unchanged; return the line."""
    path = world / "config.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    before = tree(world)
    code = main(["eval", "--config", str(path), "--data", str(world / "data"), "--out", str(world / "out"), *extra])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("ipsolve: error: "), captured.err
    assert tree(world) == before
    return lines[0]


def test_the_valid_config_runs(world, capsys, tmp_path):
    """The base of every mutation is valid: it evaluates (into another folder, to keep the world as it is)."""
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(VALID))
    code = main(["eval", "--config", str(path), "--data", str(world / "data"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("config, names", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_config_is_one_line_exit_2_and_nothing_written(world, capsys, config, names):
    line = refuse(world, config, capsys)
    assert names in line
    assert "Traceback" not in line and "range() arg" not in line and "must lie in 1…" not in line


def test_the_mutations_cover_every_class():
    ids = " ".join(case[0] for case in CASES)
    for needle in ("without model", "nan", "inf", "'..'", "'.hidden'", "'a/b'", "twice", "methods: {}",
                   "tasks: []", "model's steps", "outer x inner"):
        assert needle in ids
    assert len(CASES) > 150


@pytest.mark.parametrize("config, names", [
    (dict(VALID, methods=["ddrm", "nested"]), "methods must be a mapping"),
    (dict(VALID, methods={"ddrm": 3}), "methods.ddrm must be a mapping of `key: value` entries, got 3"),
    (dict(VALID, budgets=4), "budgets must be a list"),
    (replaced("methods.nested.inner_steps", 0), "methods.nested.inner_steps must be a positive integer, got 0"),
    (replaced("samples", 0), "samples must be a positive integer, got 0"),
])
def test_shapes_that_gave_tracebacks_are_one_line_in_a_real_process(world, tmp_path, config, names):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    before = tree(world)
    done = subprocess.run([sys.executable, "-m", "ipsolve", "eval", "--config", str(path), "--data",
                           str(world / "data"), "--out", str(world / "out")], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("ipsolve: error: ")
    assert names in done.stderr
    assert tree(world) == before


# Any value at any key: the config is accepted or refused with one line naming the key, never a traceback.
VALUES = strategies.recursive(
    strategies.none() | strategies.booleans() | strategies.integers(-2**64, 2**64)
    | strategies.floats(allow_nan=True, allow_infinity=True) | strategies.text(max_size=8),
    lambda inner: strategies.lists(inner, max_size=3) | strategies.dictionaries(strategies.text(max_size=6)
                                                                                | strategies.integers(-3, 9), inner,
                                                                                max_size=3),
    max_leaves=6)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True,  # the same examples in every run (CI)
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(path=strategies.sampled_from(sorted(KINDS)), value=VALUES)
def test_any_value_at_any_key_is_accepted_or_one_line_naming_it(tmp_path, path, value):
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(replaced(path, value)))
    try:
        load_eval_config(config)
    except ValueError as refused:
        line = str(refused)
        assert "\n" not in line and line.startswith(f"{config}: ")
        assert path.split("[")[0].split(".")[0] in line
