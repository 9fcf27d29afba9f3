"""The plan of `ipsolve eval`: every input read and checked, nothing written.

`plan_evaluation` checks, in this order, and refuses with one ValueError line at the first problem:
- the images of --data (listed; one that cannot be decoded is left out at run time, exit code 1);
- the model, and the image_shape it takes;
- each budget against the model's diffusion steps, each nested split against what the model can plan;
- the memory a batch needs: batch_size images x `samples` K draws each (`resources.check_fits`; `force`
  runs it anyway);
- each task's operator on the model's images, and each solver on each operator;
- every output folder resolved under --out (a link out of it is refused), and no input among the outputs;
- what --out already holds: nothing of the evaluation's names unless an evaluation wrote them (its
  manifest); the same settings resume; other settings are refused with the first difference named,
  unless `overwrite`, whose plan lists exactly the files the earlier evaluation recorded it wrote (a
  user's own files in the folder are never among them).
`EvalPlan` is immutable; `evaluation.run_eval_plan` (through `run_plan`) only runs it.
"""
from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import degradations
import solvers
from ipsolve import distributed, provenance, schema
from ipsolve.config import EvalConfig, in_file
from ipsolve.restore import check_model_fits, check_solver_takes
from ipsolve.services.checks import check_writable_folder
from ipsolve.services.eval_report import REPORT_FILES
from ipsolve.services.evaluation import (OutputLayout, list_images, lpips_network, model_image_shape, plan_runs,
                                         samples_part)

# what an evaluation writes in a task folder: TASK/METHOD/nfeNNN/NNNNN.png and .json (NNNNN_mean.png with
# samples), and the hidden temporary files of `imageio.atomic_path` that a killed run leaves behind
WRITTEN = re.compile(r"\.?\d{5}(_mean)?(\.[0-9a-f]{32}\.tmp)?\.(png|json)")


@dataclass(frozen=True)
class EvalPlan:
    """An evaluation, checked: run it with `evaluation.run_eval_plan`."""
    config: EvalConfig
    config_file: str | None
    images: tuple
    layout: OutputLayout
    model: object
    shape: tuple
    lpips_net: str | None
    operators: tuple          # (task name, operator) for each task
    removals: tuple           # the files an earlier evaluation of other settings wrote (with --overwrite)
    manifest: dict            # evaluation.json to write
    workers: distributed.Workers

    def operator(self, task_name: str):
        return dict(self.operators)[task_name]


def settings(config: EvalConfig) -> dict:
    """Everything in the config that changes a stored result (the batch size and FID settings do not:
    FID is recomputed by every report); `samples` K only above 1 (`samples_part`)."""
    return {"model": config.model, "tasks": [t.as_dict() for t in config.tasks], "budgets": list(config.budgets),
            "methods": [m.as_dict() for m in config.methods], "seed": config.seed,
            "image_shape": config.image_shape, "lpips": config.lpips, **samples_part(config.samples)}


def config_fingerprint(config: EvalConfig) -> str:
    """The folder-level identity of an evaluation (the fingerprint of its `settings`)."""
    return provenance.fingerprint(settings(config))


def manifest(config: EvalConfig, config_file: str | None) -> dict:
    """evaluation.json: the settings that made the folder, and the names of the folders written in it."""
    return {"config": config_fingerprint(config), "config_file": config_file,
            "settings": json.loads(json.dumps(settings(config))),  # as it reads back (lists, not tuples)
            "tasks": [t.name for t in config.tasks], "methods": [m.name for m in config.methods]}


def plan_evaluation(config: EvalConfig, data_dir, out_dir, workers: distributed.Workers, *, model=None,
                    limit: int | None = None, overwrite: bool = False,
                    config_file: str | None = None, force: bool = False) -> EvalPlan:
    """The checked plan of evaluating `config` on `data_dir` into `out_dir` (see the module doc)."""
    from ipsolve.models import load_model
    from ipsolve.resources import check_fits

    images = tuple(list_images(data_dir, limit))
    model = model if model is not None else load_model(config.model, device=workers.device)
    shape = model_image_shape(config, model)
    with in_file(config_file) if config_file else nullcontext():  # the keys of the config, against the model
        check_image_shape(config, model, workers.device)
        check_steps(config, model)
        check_fits(model, shape, config.batch_size * config.samples, workers.device, force=force)
        operators = tuple((task.name, task_operator(task, shape)) for task in config.tasks)
        for task_name, op in operators:
            for method in config.methods:
                try:
                    check_solver_takes(method.solver, op)
                except ValueError as error:
                    raise ValueError(f"methods.{method.name} cannot restore task {task_name}: {error}") from None
    layout = OutputLayout(out_dir, config.samples)
    check_writable_folder(layout.root)
    check_confined(layout, config)
    check_disjoint(layout, config, images, config_file)
    removals = earlier_files(layout, config, overwrite)
    return EvalPlan(config=config, config_file=config_file, images=images, layout=layout, model=model,
                    shape=shape, lpips_net=lpips_network(config, shape, workers.device), operators=operators,
                    removals=removals, manifest=manifest(config, config_file), workers=workers)


def check_image_shape(config: EvalConfig, model, device) -> None:
    """The config's image_shape (when it gives one) is one the model can denoise."""
    shape, trained = config.image_shape, getattr(model, "image_shape", None)
    if shape is None or trained is None:
        return
    if shape[0] != trained[0]:
        raise ValueError(f"image_shape is {list(shape)}, but the model {config.model} takes {trained[0]}-channel "
                         f"images")
    try:
        check_model_fits(model, shape, device)
    except ValueError:
        raise ValueError(f"image_shape is {list(shape)}, but the model {config.model} (trained at "
                         f"{trained[1]}x{trained[2]}) cannot take {shape[1]}x{shape[2]} images") from None


def check_steps(config: EvalConfig, model) -> None:
    """Each run's calls within the model's diffusion steps, and each nested split one the model can plan."""
    steps = len(model.alphas_cumprod)
    for run in plan_runs(config):
        where = f"methods.{run.method.name}"
        if run.split is None:
            budget = run.budgets[0]
            if budget > steps:
                raise ValueError(f"budgets[{config.budgets.index(budget)}] is {budget} NFE, more than the "
                                 f"{steps} diffusion steps of the model {config.model} ({where} makes one call "
                                 f"per step): lower the budget")
            continue
        outer, inner = run.split
        if outer * inner > steps:
            raise ValueError(f"{where}: {outer} outer x {inner} inner steps = {outer * inner} NFE, more than "
                             f"the {steps} diffusion steps of the model {config.model}: lower the budgets or "
                             f"the inner steps")
        try:
            solvers.plan(model, run.method.solver, outer, inner)
        except ValueError as error:
            raise ValueError(f"{where}: {outer} outer x {inner} inner steps cannot be planned on the model "
                             f"{config.model} ({error})") from None


def task_operator(task, shape: tuple):
    """The operator of `task` for images of `shape` (C, H, W); one line naming the task when it cannot be made."""
    channels, height, width = shape
    try:
        op = degradations.make(task.operator, channels=channels, image_size=(height, width), seed=task.seed,
                               **task.params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"task {task.name}: {schema.shown(task.operator)} with params {task.params} cannot "
                         f"be made ({error})") from None
    if tuple(op.input_shape) != tuple(shape):
        raise ValueError(f"task {task.name} takes {tuple(op.input_shape)} images, the model {tuple(shape)}")
    return op


def check_confined(layout: OutputLayout, config: EvalConfig) -> None:
    """Every folder the evaluation writes resolves (links followed) inside --out."""
    schema.confined(layout.root, layout.root / "clean", "clean/")
    for task in config.tasks:
        for method in config.methods:
            for budget in config.budgets:
                folder = layout.folder(task.name, method.name, budget)
                schema.confined(layout.root, folder, f"task {task.name}, method {method.name}")


def check_disjoint(layout: OutputLayout, config: EvalConfig, images: tuple, config_file: str | None) -> None:
    """No input (an image of --data, the config file) is among the files the evaluation writes, or in one
    of its folders (clean/ and the task folders)."""
    folders = [layout.root / "clean", *(layout.root / task.name for task in config.tasks)]
    files = [layout.root / name for name in (*REPORT_FILES, layout.manifest.name)]
    written_folders = [folder.resolve() for folder in folders]
    written_files = {file.resolve() for file in files}
    inputs = [("--data", image) for image in images]
    if config_file is not None and Path(config_file).is_file():
        inputs.append(("--config", Path(config_file)))
    for flag, path in inputs:
        resolved = path.resolve()
        inside = next((f for f in written_folders if f in resolved.parents), None)
        if resolved in written_files or inside is not None:
            raise ValueError(f"{flag} {path} would be overwritten: the evaluation writes "
                             f"{inside or resolved} in --out {layout.root}; choose another --out")


def earlier_files(layout: OutputLayout, config: EvalConfig, overwrite: bool) -> tuple:
    """() when --out holds nothing of an evaluation, or one of the same settings (it resumes); else the
    files the earlier evaluation recorded it wrote, when `overwrite` (ValueError naming the first
    difference otherwise)."""
    if not layout.manifest.is_file():
        check_nothing_in_the_way(layout, config)
        return ()
    try:
        earlier = json.loads(layout.manifest.read_text())
        same = earlier["config"] == config_fingerprint(config)
    except (ValueError, KeyError, TypeError):
        earlier, same = {}, False
    if same:
        return ()
    if not overwrite:
        raise ValueError(f"{layout.root} holds an evaluation with other settings ({difference(earlier, config)}): "
                         f"pass --overwrite to replace its results, or choose another --out")
    return recorded_files(layout, earlier)


def check_nothing_in_the_way(layout: OutputLayout, config: EvalConfig) -> None:
    """--out without an evaluation's manifest holds none of the names the evaluation writes (a user's own
    table.md or deno/ folder is never written over)."""
    for name in (*REPORT_FILES, "clean", *(task.name for task in config.tasks)):
        if (layout.root / name).exists():
            raise ValueError(f"{layout.root / name} was not written by an evaluation (--out holds no "
                             f"{layout.manifest.name}) and this one would write there: choose another --out")


def difference(earlier: dict, config: EvalConfig) -> str:
    """The first setting in which the earlier evaluation's manifest differs from `config`, in words."""
    if not isinstance(earlier.get("settings"), dict):
        return f"made with {earlier.get('config_file') or 'a config'} by an ipsolve that recorded no settings"
    defaults = {"samples": 1}  # what a setting absent from a manifest stood for (`samples_part`)
    found = schema.first_difference(by_name({**defaults, **earlier["settings"]}),
                                    by_name({**defaults, **manifest(config, None)["settings"]}))
    if found is None:
        return "the same settings with another fingerprint"
    where, there, here = found
    return f"{where} is {schema.shown(there)} there, {schema.shown(here)} here"


def by_name(settings: dict) -> dict:
    """`settings` with the lists of tasks and methods keyed by their names (key paths such as methods.ddrm.eta)."""
    return {key: {entry.get("name"): entry for entry in value} if key in ("tasks", "methods") else value
            for key, value in settings.items()}


def recorded_files(layout: OutputLayout, earlier: dict) -> tuple:
    """The files an earlier evaluation wrote in --out, by its manifest: the reports, clean/ and the result
    files of its task / method folders (plain names only; nothing a user put there). The manifest itself
    is not removed but replaced, so a run killed while removing still finds it."""
    root = layout.root
    names = lambda key: [n for n in earlier.get(key) or [] if schema.is_plain_name(n)]  # noqa: E731
    files = [root / name for name in REPORT_FILES if (root / name).is_file()]  # (the manifest is replaced)
    files += [p for p in sorted((root / "clean").glob("*.png")) if WRITTEN.fullmatch(p.name)]
    for task in names("tasks"):
        methods = names("methods") or [p.name for p in sorted((root / task).glob("*")) if p.is_dir()]
        for method in methods:
            for folder in sorted((root / task / method).glob("nfe[0-9][0-9][0-9]*")):
                files += [p for p in sorted(folder.iterdir()) if p.is_file() and WRITTEN.fullmatch(p.name)]
    for path in files:
        schema.confined(root, path, f"--overwrite of {path.relative_to(root)}")
    return tuple(files)
