"""Every input of a key that decides reuse or grouping changes the key; nothing else does.

Keys: a folder restore's job key (batch_restore.job_key: rerun reuses a finished image only when it is
unchanged) and its batch groups (measurements solved in one forward pass), an eval record's key
(Evaluator.key), the studio's model cache ((name, device)). Each input is changed alone; the key (and so
the rerun) must notice. A file's timestamp or the folder's name must not.
"""
import copy
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import degradations
import ipsolve
from ipsolve import distributed
from ipsolve.config import EvalConfig, MethodConfig, TaskConfig
from ipsolve.imageio import load_image, save_image
from ipsolve.measurement import Measurement, write_measurement
from ipsolve.services import batch_restore, evaluation
from ipsolve.services.batch_restore import BatchSettings, Job, job_key
from ipsolve.services.folder_restore import run_folder_plan
from ipsolve.services.restore_request import (RestoreRequest, plan_measurement_folder, restore_inputs,
                                              run_restore_request)

DATA = Path(__file__).parent / "data"
SHAPE = (1, 32, 32)


@pytest.fixture(scope="module")
def digits():
    return [image.float() / 255 for image in torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"][:4]]


@pytest.fixture(scope="module")
def embedded():
    from ipsolve.models import load_model
    return load_model("embedded")


def mask(seed):
    """A 32×32 mask observing a random half of the pixels."""
    return degradations.random_mask((32, 32), 0.5, seed)


def save_mask(tensor, path):
    save_image(tensor[None].float(), path)
    return path


def measure(op, digit, sigma_y, seed=0):
    """y = H x + σ n (model units) for a [0, 1] digit."""
    y = op.H(digit[None] * 2 - 1)
    return y + sigma_y * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)


def restore(folder, out, **options):
    """{file name: status} of `ipsolve restore FOLDER --out OUT` with two NFEs, run in this process."""
    request = RestoreRequest(**{"measurement": str(folder), "out": str(out), "outer": 1, "inner": 2,
                                "quiet": True, **options})
    return {job.source.name: job.status for job in run_folder_plan(plan_measurement_folder(request))}


def rerun(folder, out, **options):
    """The names a rerun restores again (status done), after asserting every other one was reused."""
    statuses = restore(folder, out, **options)
    assert set(statuses.values()) <= {"done", "reused"}, statuses
    return sorted(name for name, status in statuses.items() if status == "done")


# ------------------------------------------------------------------ folder restore: the key as a function

def specs():
    """op.spec() of every operator family (and a composition) at 1×32×32 or 3×32×32."""
    one = dict(channels=1, image_size=(32, 32))
    names = ["deno", "sr4", "sr_bicubic2", "inp", "inp_box", "deblur_uni", "deblur_gauss", "deblur_aniso",
             "saturate", "cs4", "deblur_gauss+inp"]
    return [degradations.make(name, **one).spec() for name in names] + [
        degradations.make("color", channels=3, image_size=(32, 32)).spec(),
        {"name": "inp_mask", "channels": 1, "image_size": [32, 32], "mask_path": "MASK"}]  # a mask file


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    return [changed(value[0]), *value[1:]]


def field_paths(spec, prefix=()):
    """(path, value) of every leaf field of a spec; the parts of a composition field by field."""
    for name, value in spec.items():
        if name == "parts":
            for i, part in enumerate(value):
                yield from field_paths(part, (*prefix, "parts", i))
        else:
            yield (*prefix, name), value


def with_field(spec, path, value):
    spec = copy.deepcopy(spec)
    inner = spec
    for step in path[:-1]:
        inner = inner[step]
    inner[path[-1]] = value
    return spec


class SpecOp:
    """An operator reduced to what a key reads of it."""

    def __init__(self, spec):
        self._spec = spec
        self.name = spec["name"]

    def spec(self):
        return copy.deepcopy(self._spec)


SETTINGS = BatchSettings(outer=4, inner=5, budget=None, solver="ddrm", options={"eta": 0.85, "eta_b": 1.0},
                         vanilla=False, seed=0, model_name="embedded", schedule=None)


def key_of(source, spec, sigma_y=0.1, index=0, settings=SETTINGS, model_key="m" * 16):
    return job_key(index, Path(source), Measurement(None, SpecOp(spec), sigma_y), settings, model_key)


@pytest.mark.parametrize("spec", specs(), ids=lambda spec: spec["name"])
def test_every_field_of_the_operator_spec_is_in_the_folder_key(tmp_path, spec):
    source = tmp_path / "y.png"
    source.write_bytes(b"measurement")
    if spec.get("mask_path") == "MASK":  # its bytes are tested below, its path must not count
        spec = dict(spec, mask_path=str(save_mask(mask(0), tmp_path / "y.mask.png")))
    before = key_of(source, spec)
    assert key_of(source, copy.deepcopy(spec)) == before
    fields = [(path, value) for path, value in field_paths(spec) if path[-1] != "mask_path"]
    assert len(fields) >= 3
    for path, value in fields:
        assert key_of(source, with_field(spec, path, changed(value))) != before, path


def test_noise_seed_settings_model_and_version_are_in_the_folder_key(tmp_path, monkeypatch):
    source = tmp_path / "y.png"
    source.write_bytes(b"measurement")
    spec = degradations.make("sr4", channels=1, image_size=(32, 32)).spec()
    before = key_of(source, spec)
    keys = {"sigma_y": key_of(source, spec, sigma_y=0.2), "index": key_of(source, spec, index=1),
            "model": key_of(source, spec, model_key="n" * 16)}
    for name, value in [("outer", 5), ("inner", 6), ("budget", 12), ("solver", "pigdm"), ("vanilla", True),
                        ("seed", 1), ("schedule", "paper"), ("samples", 2), ("samples", 3),
                        ("estimate", "mean"), ("options", {"eta": 0.5, "eta_b": 1.0}),
                        ("options", {"eta": 0.85, "eta_b": 0.5})]:
        keys[f"{name}={value}"] = key_of(source, spec, settings=replace(SETTINGS, **{name: value}))
    source.write_bytes(b"measurement, edited")
    keys["source bytes"] = key_of(source, spec)
    source.write_bytes(b"measurement")
    Path(f"{source}.json").write_text("{}")
    keys["sidecar bytes"] = key_of(source, spec)
    Path(f"{source}.json").unlink()
    monkeypatch.setattr(ipsolve, "__version__", ipsolve.__version__ + ".post1")
    keys["version"] = key_of(source, spec)
    monkeypatch.undo()
    assert {name: key for name, key in keys.items() if key == before} == {}
    assert len(set(keys.values())) == len(keys)
    # the model's name is not its weights: two names of one model share results
    assert key_of(source, spec, settings=replace(SETTINGS, model_name="other")) == before
    assert key_of(source, spec) == before


@pytest.mark.parametrize("composed", [False, True], ids=["inp_mask", "deblur_gauss+inp_mask"])
def test_the_bytes_of_the_mask_file_are_in_the_folder_key_and_its_folder_is_not(tmp_path, composed):
    source = tmp_path / "a" / "y.png"
    source.parent.mkdir()
    source.write_bytes(b"measurement")
    mask_file = save_mask(mask(0), tmp_path / "a" / "y.mask.png")

    def spec_for(path):
        spec = degradations.make("inp_mask", channels=1, image_size=(32, 32), mask_path=str(path)).spec()
        if not composed:
            return spec
        blur = degradations.make("deblur_gauss", channels=1, image_size=(32, 32)).spec()
        return {"name": "deblur_gauss+inp_mask", "channels": 1, "image_size": [32, 32], "parts": [blur, spec]}

    before = key_of(source, spec_for(mask_file))
    os.utime(mask_file, (1, 1))
    assert key_of(source, spec_for(mask_file)) == before
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert key_of(tmp_path / "copy" / "y.png", spec_for(tmp_path / "copy" / "y.mask.png")) == before
    save_mask(mask(1), mask_file)  # edited in place, same name
    assert key_of(source, spec_for(mask_file)) != before


# ------------------------------------------------------------------ folder restore: a rerun recomputes

@pytest.fixture
def sidecar_folder(tmp_path, digits):
    """sr4, deblur_gauss and inp_mask (mask file a.mask.png) measurements with sidecars, σ 0.05 pixel."""
    folder = tmp_path / "in"
    folder.mkdir()
    ops = {"a": degradations.Inpainting(mask(0), channels=1),
           "b": degradations.make("deblur_gauss", channels=1, image_size=(32, 32), sigma=2.0),
           "c": degradations.make("sr4", channels=1, image_size=(32, 32))}
    for i, (name, op) in enumerate(ops.items()):
        write_measurement(folder / f"{name}.png", measure(op, digits[i], 0.1, i), op, 0.1)
    return folder


def edit_sidecar(path, **changes):
    sidecar = json.loads(Path(f"{path}.json").read_text())
    for name, value in changes.items():
        if name == "sigma_y":
            sidecar["sigma_y"] = {"model": value, "pixel": value / 2}
        else:
            sidecar["operator"][name] = value
    Path(f"{path}.json").write_text(json.dumps(sidecar))


def test_a_rerun_restores_again_exactly_the_measurement_whose_input_changed(sidecar_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert restore(sidecar_folder, out) == {"a.png": "done", "b.png": "done", "c.png": "done"}
    assert rerun(sidecar_folder, out) == []
    for path in sidecar_folder.iterdir():  # timestamps are not inputs
        os.utime(path, (1, 1))
    assert rerun(sidecar_folder, out) == []
    save_mask(mask(1), sidecar_folder / "a.mask.png")  # a mask file edited in place, same name
    assert rerun(sidecar_folder, out) == ["a.png"]
    for field, value in [("sigma", 3.0), ("width", 7), ("boundary", "zero"), ("threshold", 0.01)]:
        edit_sidecar(sidecar_folder / "b.png", **{field: value})
        assert rerun(sidecar_folder, out) == ["b.png"], field
    edit_sidecar(sidecar_folder / "c.png", sigma_y=0.3)  # σ_y in both units, consistently
    assert rerun(sidecar_folder, out) == ["c.png"]
    save_image(load_image(sidecar_folder / "c.png").flip(-1), sidecar_folder / "c.png")  # source bytes
    assert rerun(sidecar_folder, out) == ["c.png"]
    # other settings into the same OUT are refused before anything (issue 19's plan), or redone with --overwrite
    for changed in ({"seed": 1}, {"eta": 0.5}, {"inner": 1, "outer": 2}, {"vanilla": True}):
        with pytest.raises(ValueError, match="use another --out or --overwrite"):
            restore(sidecar_folder, out, **changed)
    assert rerun(sidecar_folder, out, seed=1, overwrite=True) == ["a.png", "b.png", "c.png"]
    assert rerun(sidecar_folder, out, seed=1) == []
    monkeypatch.setattr(ipsolve, "__version__", ipsolve.__version__ + ".post1")
    assert rerun(sidecar_folder, out, seed=1) == ["a.png", "b.png", "c.png"]


def test_other_weights_under_the_same_name_restore_again(sidecar_folder, tmp_path, monkeypatch, embedded):
    """A checkpoint replaced in place (same --model, other weights) is in the key through the weights'
    fingerprint: everything is restored again. The same weights by another --model name are another
    setting of the folder, refused before anything (issue 19's plan) unless --overwrite."""
    import ipsolve.models

    nudged = copy.deepcopy(embedded)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3
    models = {"embedded": embedded, "same": copy.deepcopy(embedded)}
    monkeypatch.setattr(ipsolve.models, "load_model", lambda name, device=None: models[name])
    out = tmp_path / "out"
    assert set(restore(sidecar_folder, out, model="embedded").values()) == {"done"}
    assert rerun(sidecar_folder, out, model="embedded") == []
    with pytest.raises(ValueError, match="--model embedded; this one is --model same"):
        restore(sidecar_folder, out, model="same")
    models["embedded"] = nudged
    assert rerun(sidecar_folder, out, model="embedded") == ["a.png", "b.png", "c.png"]


def test_a_copied_folder_is_reused_whole(sidecar_folder, tmp_path):
    assert set(restore(sidecar_folder, tmp_path / "out").values()) == {"done"}
    shutil.copytree(sidecar_folder, tmp_path / "renamed")
    assert rerun(tmp_path / "renamed", tmp_path / "out") == []


@pytest.fixture
def plain_folder(tmp_path, digits):
    """Two plain 32×32 images (no sidecar) and a mask file beside the folder."""
    folder = tmp_path / "plain"
    folder.mkdir()
    for i in range(2):
        save_image(digits[i] * mask(0)[None], folder / f"p{i}.png")
    save_mask(mask(0), tmp_path / "m.png")
    return folder


def test_the_noise_level_given_for_plain_images_is_in_their_key(plain_folder, tmp_path):
    out = tmp_path / "out"
    assert set(restore(plain_folder, out, task="deno", sigma_y=0.05).values()) == {"done"}
    assert rerun(plain_folder, out, task="deno", sigma_y=0.05) == []
    assert rerun(plain_folder, out, task="deno", sigma_y=0.1) == ["p0.png", "p1.png"]
    assert rerun(plain_folder, out, task="deno") == ["p0.png", "p1.png"]  # none: σ_y = 0
    assert rerun(plain_folder, out, task="deblur_gauss") == ["p0.png", "p1.png"]


@pytest.mark.parametrize("task,solver", [("inp", "ddrm"), ("deblur_gauss+inp", "pigdm")])
def test_the_bytes_of_a_mask_given_for_plain_images_are_in_their_key(plain_folder, tmp_path, task, solver):
    out, mask_file = tmp_path / "out", tmp_path / "m.png"
    options = dict(task=task, solver=solver, mask=str(mask_file))
    assert set(restore(plain_folder, out, **options).values()) == {"done"}
    os.utime(mask_file, (1, 1))
    assert rerun(plain_folder, out, **options) == []
    save_mask(mask(1), mask_file)  # edited in place, same name
    assert rerun(plain_folder, out, **options) == ["p0.png", "p1.png"]
    moved = tmp_path / "elsewhere" / "mask.png"
    moved.parent.mkdir()
    shutil.copy(mask_file, moved)
    assert rerun(plain_folder, out, **dict(options, mask=str(moved))) == []


# ------------------------------------------------------------------ folder restore: batch groups

@pytest.mark.parametrize("ops", [
    (degradations.Inpainting(mask(0), channels=1), degradations.Inpainting(mask(1), channels=1)),
    tuple(degradations.make("deblur_gauss", channels=1, image_size=(32, 32), sigma=2.0, width=w) for w in (3, 7)),
    tuple(degradations.make(f"sr{r}", channels=1, image_size=(32, 32)) for r in (2, 4)),
], ids=["mask", "blur width", "scale factor"])
def test_measurements_differing_in_one_operator_parameter_are_solved_apart(tmp_path, digits, ops):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, op in enumerate(ops):
        write_measurement(folder / f"m{i}.png", measure(op, digits[i], 0.1, i), op, 0.1)
    options = dict(outer=2, inner=2, quiet=True)
    request = RestoreRequest(measurement=str(folder), out=str(tmp_path / "both"), batch_size=2, **options)
    assert [job.status for job in run_folder_plan(plan_measurement_folder(request))] == ["done", "done"]
    for i in range(2):  # each alone, with the seed it has in the folder
        alone = RestoreRequest(measurement=str(folder / f"m{i}.png"), out=str(tmp_path / f"alone{i}"),
                               seed=distributed.image_seed(0, i), **options)
        run_restore_request(alone, restore_inputs(alone))
        torch.testing.assert_close(load_image(tmp_path / "both" / f"m{i}" / "final.png"),
                                   load_image(tmp_path / f"alone{i}" / "final.png"), rtol=0, atol=1.5 / 255)


def test_groups_are_one_operator_and_one_noise_level(tmp_path):
    def job(index, op, sigma_y):
        return Job(index, tmp_path / f"{index}.png", Measurement(None, op, sigma_y))

    blur = lambda width: degradations.make("deblur_gauss", channels=1, image_size=(32, 32), width=width)  # noqa: E731
    jobs = [job(0, blur(5), 0.1), job(1, blur(7), 0.1), job(2, blur(5), 0.2), job(3, blur(5), 0.1),
            job(4, degradations.Inpainting(mask(0), channels=1), 0.1)]
    groups = batch_restore._groups(jobs)
    assert [[j.index for j in group] for group in groups] == [[0, 3], [1], [2], [4]]


# ------------------------------------------------------------------ eval records

@pytest.fixture
def evaluator(tmp_path, embedded):
    images = tmp_path / "data"
    images.mkdir()
    for name in ("a.png", "b.png"):
        save_image(torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(len(name))), images / name)
    save_mask(mask(0), tmp_path / "mask.png")
    config = EvalConfig(model="embedded", budgets=(4, 8), seed=0, tasks=(
        TaskConfig("inp_mask", "inp_mask", 0.05, {"mask_path": str(tmp_path / "mask.png")}),),
        methods=(MethodConfig("ddrm", options={"eta": 0.85, "eta_b": 1.0}),
                 MethodConfig("nested", nested=True, options={"eta": 0.85, "eta_b": 1.0},
                              splits={4: (2, 2), 8: (2, 4)})))

    def make(config=config, model=embedded, files=None, lpips="alex"):
        files = files or sorted(images.iterdir())
        return evaluation.Evaluator(SimpleNamespace(config=config, model=model, images=files, lpips_net=lpips,
                                                    layout=evaluation.OutputLayout(tmp_path / "out"),
                                                    workers=distributed.Workers(), shape=SHAPE))
    return make


def eval_keys(evaluator):
    return [evaluator.key(run, budget, index) for run in evaluation.plan_runs(evaluator.config)
            for budget in run.budgets for index in range(len(evaluator.images))]


def test_every_input_of_an_eval_record_changes_its_key(evaluator, tmp_path, monkeypatch, embedded):
    before = evaluator()
    keys = eval_keys(before)
    assert len(set(keys)) == len(keys) == 2 * (2 + 2)  # per image × (two plain budgets, two nested splits)
    config = before.config
    task, method = config.tasks[0], config.methods[0]
    nudged = copy.deepcopy(embedded)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3
    others = {f"task {name}": replace(config, tasks=(replace(task, **{name: value}),)) for name, value in
              [("name", "other"), ("operator", "inp"), ("sigma_y_pixel", 0.1), ("seed", 1), ("params", {})]}
    others.update({f"method {name}": replace(config, methods=(replace(method, **{name: value}), *config.methods[1:]))
                   for name, value in [("name", "plain"), ("solver", "ddnm"), ("options", {"eta": 0.5, "eta_b": 1.0}),
                                       ("options", {"eta": 0.85, "eta_b": 0.5}), ("eta_outer", 0.5)]})
    others["seed"] = replace(config, seed=1)
    others.update({f"samples {k}": replace(config, samples=k) for k in (2, 3)})
    changes = {name: evaluator(config=changed) for name, changed in others.items()}
    changes["model"] = evaluator(model=nudged)
    changes["lpips"] = evaluator(lpips="vgg")
    for name, changed_evaluator in changes.items():
        first = changed_evaluator.key(evaluation.plan_runs(changed_evaluator.config)[0], 4, 0)
        assert first != keys[0], name
    assert changes["samples 2"].key(evaluation.plan_runs(config)[0], 4, 0) != \
        changes["samples 3"].key(evaluation.plan_runs(config)[0], 4, 0)
    # K = 1 spelled out is the K of a config without samples: what an earlier ipsolve stored stays reused
    assert eval_keys(evaluator(config=replace(config, samples=1))) == keys
    monkeypatch.setattr(ipsolve, "__version__", ipsolve.__version__ + ".post1")
    assert eval_keys(evaluator())[0] != keys[0]
    monkeypatch.undo()
    save_mask(mask(1), tmp_path / "mask.png")  # the task's mask file edited in place
    assert eval_keys(evaluator())[0] != keys[0]
    save_mask(mask(0), tmp_path / "mask.png")
    save_image(torch.zeros(1, 32, 32), tmp_path / "data" / "a.png")  # one image's bytes
    changed = eval_keys(evaluator())
    assert [a == b for a, b in zip(changed, keys)] == [False, True] * 4


def test_the_run_its_split_its_budgets_and_the_compared_budgets_are_in_an_eval_key(evaluator):
    config = evaluator().config
    task, plain, nested = config.tasks[0], *config.methods
    both = replace(nested, splits={4: (2, 4), 8: (2, 4)})  # one 2×4 run read at 4 and 8 NFEs

    def key(method, budgets, budget, config=config):
        return evaluator(config=config).key(evaluation.Run(task, method, budgets), budget, 0)

    keys = {"plain at 8": key(plain, (8,), 8),
            "its x̂₀ compared at 2, not 4": key(plain, (8,), 8, replace(config, budgets=(2, 8))),
            "read at 4": key(plain, (4,), 4),
            "nested": key(replace(plain, nested=True, splits=nested.splits), (8,), 8),
            "nested 2×4": key(nested, (8,), 8),
            "nested 4×2": key(replace(nested, splits={4: (2, 2), 8: (4, 2)}), (8,), 8),
            "one 2×4 run read at 8": key(both, (8,), 8), "one 2×4 run read at 4 and 8": key(both, (4, 8), 8)}
    assert len(set(keys.values())) == len(keys), keys


def test_timestamps_and_the_data_folder_name_are_not_in_an_eval_key(evaluator, tmp_path):
    keys = eval_keys(evaluator())
    for path in (tmp_path / "data").iterdir():
        os.utime(path, (1, 1))
    assert eval_keys(evaluator()) == keys
    shutil.copytree(tmp_path / "data", tmp_path / "copied")
    assert eval_keys(evaluator(files=sorted((tmp_path / "copied").iterdir()))) == keys
    # the batch size and FID settings decide no stored result
    assert eval_keys(evaluator(config=replace(evaluator().config, batch_size=1, fid_mode=None))) == keys


# ------------------------------------------------------------------ the studio's model cache

def test_the_studio_loads_each_model_once_per_name_and_device(monkeypatch, tmp_path):
    import ipsolve.models
    from ipsolve.studio.events import Studio

    loads = []

    def load(name, device):
        loads.append((name, str(device)))
        return object()

    monkeypatch.setattr(ipsolve.models, "load_model", load)
    studio = Studio(["a", "b"], tmp_path)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    first = studio.load_model("a", cpu)
    assert studio.load_model("a", cpu) is first
    others = [studio.load_model("b", cpu), studio.load_model("a", meta)]
    assert all(other is not first for other in others) and others[0] is not others[1]
    assert studio.load_model("b", cpu) is others[0] and studio.load_model("a", meta) is others[1]
    assert loads == [("a", "cpu"), ("b", "cpu"), ("a", "meta")]
