"""`ipsolve restore DIR --out OUT` as one plan: everything checked and read, then run.

`plan_folder_restore(request)` checks the request, loads the model, reads every measurement of DIR,
checks the outputs (run folders named plainly, confined under OUT, no input among them) and compares
what OUT holds with what this run would write; it writes nothing. A plan is refused (ValueError, one
line) when no measurement can be restored, or when OUT holds a folder restore with other settings
(unless --overwrite: the run then first removes only what the earlier run recorded it wrote).
`run_folder_plan(plan)` only runs it (`batch_restore.restore_folder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ipsolve.services.batch_restore import BatchSettings, Reading
from ipsolve.services.checks import one_line
from ipsolve.services.folder_lock import LOCK_NAME
from ipsolve.services.out_folder import check_confined, check_run_folder, check_same_settings, check_spares_inputs
from ipsolve.services.run_folder import remove_written, stored_record

INDEX_NAME = "index.csv"


@dataclass(frozen=True)
class FolderRestorePlan:
    """A checked folder restore: what to restore, with what, and where."""
    out: Path
    readings: tuple[Reading, ...]
    model: object
    settings: BatchSettings
    workers: object             # ipsolve.distributed.Workers
    batch_size: int
    progress: bool
    earlier: tuple[Path, ...]   # run folders of an earlier run to clear first (--overwrite), else ()


def plan_folder_restore(request, options: dict) -> FolderRestorePlan:
    """The plan of `request` (a RestoreRequest whose measurement is a folder, its quick checks made;
    `options`: its solver's options), or ValueError / OSError. Nothing is written."""
    from ipsolve import distributed
    from ipsolve.measurement import sidecar_path
    from ipsolve.models import load_model
    from ipsolve.resources import check_fits
    from ipsolve.services.batch_restore import list_measurements, read_measurements
    from ipsolve.services.restore_request import check_runs_on, read_for

    files = list_measurements(request.measurement)
    out = Path(request.out)
    workers = distributed.start(request.device)
    try:
        model = load_model(request.model, device=workers.device)
        check_runs_on(model, request)
        if getattr(model, "image_shape", None):
            check_fits(model, tuple(model.image_shape), request.batch_size * request.samples, workers.device,
                       force=request.force)
        settings = BatchSettings(request.outer, request.inner, request.budget, request.solver,
                                 options, request.vanilla, request.seed, request.model,
                                 request.schedule, request.samples, request.estimate)
        readings = read_measurements(files, lambda path: read_for(request, path, request.mask, model,
                                                                  workers.device), settings, model)
        if all(reading.error is not None for reading in readings):
            first = readings[0]
            raise ValueError(f"none of the {len(readings)} measurements of {request.measurement} can be restored "
                             f"({first.source.name}: {one_line(first.error)})")
        inputs = [request.measurement, request.mask, *files, *(sidecar_path(path) for path in files),
                  *(reading.measurement.op.spec().get("mask_path") for reading in readings if reading.measurement)]
        for path in files:
            check_confined(out, out / path.stem)
            check_spares_inputs(out / path.stem, inputs)
            check_run_folder(out / path.stem)
        if (out / INDEX_NAME).resolve() in {Path(p).resolve() for p in filter(None, inputs)}:
            raise ValueError(f"writing {out / INDEX_NAME} would replace an input: choose another --out")
        earlier = earlier_run_folders(out)
        if not request.overwrite:
            check_earlier_settings(out, earlier, settings)
        return FolderRestorePlan(out, readings, model, settings, workers, request.batch_size, not request.quiet,
                                 earlier if request.overwrite else ())
    except BaseException:
        distributed.stop(workers)
        raise


def run_folder_plan(plan: FolderRestorePlan):
    """Run `plan`: the jobs (`batch_restore.Job`) on the main process, None on the others."""
    from ipsolve import distributed
    from ipsolve.services.batch_restore import restore_folder

    try:
        if plan.earlier and plan.workers.is_main:
            clear_earlier_run(plan.out, plan.earlier)
        plan.workers.barrier()
        jobs = restore_folder(plan.readings, plan.out, plan.model, plan.settings, batch_size=plan.batch_size,
                              workers=plan.workers, progress=plan.progress)
    finally:
        distributed.stop(plan.workers)
    return jobs if plan.workers.is_main else None


def earlier_run_folders(out: Path) -> tuple[Path, ...]:
    """The run folders a folder restore wrote in `out` (their run.json has an index)."""
    if not out.is_dir():
        return ()
    return tuple(path for path in sorted(out.iterdir())
                 if path.is_dir() and not path.name.startswith(".") and "index" in stored_record(path))


def check_earlier_settings(out: Path, earlier, settings: BatchSettings) -> None:
    """ValueError naming the first setting in which a run folder of `earlier` differs from `settings`."""
    wanted = flags_of(settings.as_dict(), settings.model_name)
    for folder in earlier:
        record = stored_record(folder)
        if isinstance(record.get("settings"), dict):  # else a file that could not be read: nothing to compare
            held = flags_of(record["settings"], (record.get("model") or {}).get("name"))
            check_same_settings(out, "a restore", held, wanted)


def flags_of(settings: dict, model_name) -> dict:
    """A folder restore's settings (`BatchSettings.as_dict`) as the flags that give them; defaults spelled out."""
    from ipsolve.config import SOLVER_OPTIONS

    options = settings.get("options") or {}
    outer, inner, budget = settings.get("outer"), settings.get("inner"), settings.get("budget")
    if budget is None and isinstance(outer, int) and isinstance(inner, int):
        budget = outer * inner
    every_option = sorted({name for names in SOLVER_OPTIONS.values() for name in names})
    return {"--model": model_name, "--solver": settings.get("solver"), "--vanilla": bool(settings.get("vanilla")),
            "--outer": outer, "--inner": inner, "--budget": budget, "--schedule": settings.get("schedule") or "matched",
            **{f"--{name.replace('_', '-')}": options.get(name) for name in every_option},
            "--seed": settings.get("seed"), "--samples": settings.get("samples") or 1,  # older runs drew one
            "--estimate": settings.get("estimate") or "sample"}


def clear_earlier_run(out: Path, earlier) -> None:
    """Remove what the earlier run recorded it wrote: each run folder's recorded files (then the folder,
    when nothing else is left in it) and OUT/index.csv."""
    for folder in earlier:
        remove_written(folder)
        (folder / LOCK_NAME).unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()
    (out / INDEX_NAME).unlink(missing_ok=True)
