"""Restoring every measurement of a folder: `ipsolve restore DIR --out OUT`, on one process or many.

Measurements are the .png files of DIR sorted by name (mask files `*.mask.png` excluded); index i is the
position in that list. Each is read with its sidecar, or with the one --task / --sigma-y / --mask given
for all. Measurements of one operator and noise level are solved together, `batch_size` per forward
pass; image i draws everything from its own generator seeded `seed * 1_000_003 + i`, so its result does
not depend on the batch it shares or on how the folder is sharded over processes (torchrun: rank r takes
i = r, r+K, …).

Outputs: OUT/NAME/ (NAME = the file's stem) is the run folder `ipsolve restore` writes for that image,
its run.json holding `key`, the fingerprint of what produced it (the measurement, sidecar and mask bytes,
the model's weights, the solver and its options, steps, budget, samples and estimate, the image's seed, the
ipsolve version). With --samples K each image's K draws share the batch (its rows, measurement-major, all
drawn from the image's generator) and its run folder gets the files of `ipsolve restore FILE --samples K`
(with --estimate mean its mean and std pictures: `run_folder.RunFolder`).
A rerun reuses a finished image only when its key is unchanged. `read_measurements` reads every file
before anything is written (`folder_restore` plans with it); `restore_folder` then runs. OUT/index.csv
(written by rank 0 at the end): source, task, NFE, seconds, status — `done`, `reused`, `failed: reason`
— one bad file never stops the others.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

import ipsolve
from ipsolve import distributed, provenance
from ipsolve.figures import measurement_picture
from ipsolve.imageio import atomic_path
from ipsolve.restore import Preview, restore_batch
from ipsolve.services.checks import one_line
from ipsolve.services.progress import CountProgress
from ipsolve.services.out_folder import plain_name
from ipsolve.services.run_folder import RunFolder, record_failure, stored_record

INDEX_COLUMNS = ("index", "source", "task", "nfe", "seconds", "status", "folder")


def list_measurements(folder) -> list[Path]:
    """The measurement images of `folder` sorted by name (mask files excluded); each name (the file's
    stem) names its run folder under --out, so it must be a plain name."""
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and p.suffix.lower() == ".png" and not p.name.lower().endswith(".mask.png"))
    if not files:
        raise ValueError(f"{folder} holds no .png measurement")
    for path in files:
        plain_name(path.stem, f"{path}: its run folder")
    names = [p.stem for p in files]
    twins = sorted({name for name in names if names.count(name) > 1})
    if twins:
        raise ValueError(f"{folder}: several measurements are named {twins[0]} (case aside): rename them")
    return files


class Reading(NamedTuple):
    """One measurement of the folder as read before anything is written."""
    index: int
    source: Path
    measurement: object       # ipsolve.measurement.Measurement, or None when it cannot be restored
    key: str                  # `job_key`, "" when unread
    error: Exception | None   # why it cannot be restored


@dataclass
class Job:
    """One measurement of the folder and what became of it."""
    index: int
    source: Path
    measurement: object = None
    task: str = ""
    key: str = ""
    status: str = "pending"
    nfe: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class BatchSettings:
    """Everything but the measurements that decides a result (and the record of each run)."""
    outer: int
    inner: int
    budget: int | None
    solver: str
    options: dict
    vanilla: bool
    seed: int
    model_name: str
    schedule: str | None = None
    samples: int = 1            # K posterior draws per measurement, in one batch
    estimate: str = "sample"    # "mean": also the mean and std of the K draws (`run_folder.RunFolder`)

    def as_dict(self) -> dict:
        return {"outer": self.outer, "inner": self.inner, "budget": self.budget, "solver": self.solver,
                "options": self.options, "vanilla": self.vanilla, "seed": self.seed, "schedule": self.schedule,
                "samples": self.samples, "estimate": self.estimate}


def job_key(index: int, source: Path, measurement, settings: BatchSettings, model_key: str) -> str:
    """The fingerprint of what produces a result: the measurement's files' bytes (its mask's among them,
    through `provenance.operator_key`), the model and the settings."""
    inputs = [source, Path(f"{source}.json")]
    return provenance.fingerprint({
        "ipsolve": ipsolve.__version__, "model": model_key, "settings": settings.as_dict(),
        "files": [provenance.file_fingerprint(p) if p.is_file() else None for p in inputs],
        "operator": provenance.operator_key(measurement.op.spec()), "sigma_y": float(measurement.sigma_y),
        "seed": distributed.image_seed(settings.seed, index)})


def read_measurements(files: list[Path], read, settings: BatchSettings, model) -> tuple[Reading, ...]:
    """Every file read with `read(path)` (ValueError / OSError for a bad one, kept as its reading's error);
    nothing is written."""
    model_key = provenance.model_fingerprint(model)
    readings = []
    for index, source in enumerate(files):
        try:
            measurement = read(source)
            readings.append(Reading(index, source, measurement,
                                    job_key(index, source, measurement, settings, model_key), None))
        except (ValueError, OSError) as error:
            readings.append(Reading(index, source, None, "", error))
    return tuple(readings)


def restore_folder(readings, out, model, settings: BatchSettings, *, batch_size: int = 4,
                   workers: distributed.Workers | None = None, progress: bool = True) -> list[Job]:
    """Restore this process's share of `readings` (`read_measurements`) into `out`; return every job of
    the folder (rank 0) after writing OUT/index.csv."""
    workers = workers or distributed.Workers()
    out = Path(out)
    jobs = []
    for reading in (readings[index] for index in workers.shard(len(readings))):
        job = Job(reading.index, reading.source, reading.measurement, key=reading.key)
        jobs.append(job)
        if reading.error is not None:
            _fail_alone(job, out, reading.error)
            continue
        job.task = reading.measurement.op.name
        stored = stored_record(out / job.source.stem)
        if stored.get("status") == "done" and stored.get("key") == job.key:
            job.status, job.nfe, job.seconds = "reused", stored.get("nfe", 0), stored.get("elapsed_s", 0.0)
    pending = [job for job in jobs if job.status == "pending"]
    with CountProgress(len(pending), "restore", enabled=progress and workers.is_main) as bar:
        for group in _groups(pending):
            for start in range(0, len(group), batch_size):
                _solve(group[start:start + batch_size], out, model, settings, workers.device, bar)
                bar.update(len(group[start:start + batch_size]))
    workers.barrier()
    if not workers.is_main:
        return jobs
    every = _read_back([reading.source for reading in readings], out, jobs)
    write_index(out / "index.csv", every)
    return every


def _fail_alone(job: Job, out: Path, error: Exception) -> None:
    """A file that cannot be restored: its run folder says why (for the index, on any rank)."""
    job.status = f"failed: {one_line(error)}"
    run_folder = RunFolder(out / job.source.stem)
    run_folder.start({"ipsolve_version": ipsolve.__version__, "measurement": str(job.source.resolve()),
                      "index": job.index})
    record_failure(run_folder, error)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs of one operator and noise level (they can share forward passes), in index order."""
    groups = {}
    for job in jobs:
        key = json.dumps([job.measurement.op.spec(), float(job.measurement.sigma_y)], sort_keys=True, default=str)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def _solve(batch: list[Job], out: Path, model, settings: BatchSettings, device, bar) -> None:
    """One batched restore; each image's previews go to its own run folder."""
    first = batch[0].measurement
    y = torch.cat([job.measurement.y for job in batch]).to(device)
    generators = [distributed.image_generator(settings.seed, job.index) for job in batch]
    folders = [RunFolder(out / job.source.stem, measurement=measurement_picture(job.measurement.y, job.measurement.op),
                         estimate=settings.estimate)
               for job in batch]
    for job, run_folder in zip(batch, folders):
        run_folder.start(_record(job, settings, str(device)))
    start = time.perf_counter()

    def on_preview(preview: Preview):
        for row, run_folder in enumerate(folders):
            run_folder.add_preview(preview_of(preview, row, settings.samples), time.perf_counter() - start)
        bar.note(nfe=preview.nfe)

    try:
        restore_batch(y, first.op, first.sigma_y, model, settings.outer, settings.inner, budget=settings.budget,
                      solver=settings.solver, vanilla=settings.vanilla, schedule=settings.schedule,
                      noise=distributed.per_image_noise(generators, settings.samples), samples=settings.samples,
                      on_preview=on_preview, **settings.options)
    except (ValueError, OSError, RuntimeError) as error:
        for job, run_folder in zip(batch, folders):
            job.status = f"failed: {one_line(error)}"
            record_failure(run_folder, error)
        return
    except KeyboardInterrupt:
        for run_folder in folders:
            run_folder.finish({"interrupted": True})
        raise
    elapsed = round(time.perf_counter() - start, 3)
    for job, run_folder in zip(batch, folders):
        job.status, job.nfe, job.seconds = "done", run_folder.record.get("nfe", 0), elapsed
        run_folder.finish({"interrupted": False, "elapsed_s": elapsed})


def preview_of(preview: Preview, row: int, samples: int) -> Preview:
    """Measurement `row`'s part of a batch preview: its K draws (rows row·K … row·K + K − 1) and, with K > 1,
    their estimate, as `ipsolve restore FILE --samples K` hands them to its run folder."""
    x0 = preview.x0[row * samples:(row + 1) * samples]
    estimated = preview.estimate
    if estimated is not None:
        part = slice(row, row + 1)
        estimated = type(estimated)(estimated.mean[part], estimated.std[part], estimated.samples[part])
    return Preview(x0, preview.nfe, preview.step, estimated)


def _record(job: Job, settings: BatchSettings, device: str) -> dict:
    measurement = job.measurement
    sigma_y = float(measurement.sigma_y)
    return {"ipsolve_version": ipsolve.__version__, "torch_version": torch.__version__, "key": job.key,
            "measurement": str(job.source.resolve()), "index": job.index,
            "model": {"name": settings.model_name}, "task": measurement.op.spec(),
            "solver": settings.solver if settings.vanilla else f"nested({settings.solver})",
            "settings": settings.as_dict(), "sigma_y": {"pixel": sigma_y / 2, "model": sigma_y},
            "seed": distributed.image_seed(settings.seed, job.index), "samples": settings.samples,
            "estimate": settings.estimate, "device": device, "nfe": 0, "interrupted": False}


def _read_back(files: list[Path], out: Path, mine: list[Job]) -> list[Job]:
    """Every job of the folder: this process's as they ended, the other ranks' from their run.json."""
    own = {job.index: job for job in mine}
    every = []
    for index, source in enumerate(files):
        if index in own:
            every.append(own[index])
            continue
        job, record = Job(index, source), stored_record(out / source.stem)
        job.status = "done" if record.get("status") == "done" else f"failed: {record.get('error', 'no run record')}"
        job.nfe, job.seconds = record.get("nfe", 0), record.get("elapsed_s", 0.0)
        job.task = (record.get("task") or {}).get("name", "")
        every.append(job)
    return every


def write_index(path: Path, jobs: list[Job]) -> None:
    rows = [{"index": job.index, "source": job.source.name, "task": job.task, "nfe": job.nfe, "seconds": job.seconds,
             "status": job.status, "folder": job.source.stem}
            for job in jobs]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
