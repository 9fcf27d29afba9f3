"""One restore run into an output folder: the service behind `ipsolve restore` and `ipsolve studio`.

`run_restore_job` restores a checked measurement with a loaded model and writes the run folder (every
preview the moment it exists, then final.png, strip.png, anytime.gif and run.json; see
`ipsolve.services.run_folder`). The command line and the studio both call it (through
`restore_request.run_restore_request`), so a run started from the page writes exactly the files `ipsolve
restore` writes. Inputs are checked before by `restore_request.restore_inputs`; nothing is written before
the folder is started.

Stopping: Ctrl-C / SIGTERM (`KeyboardInterrupt`) or `should_stop()` returning True (checked after every
network evaluation) end the run early; the latest preview stays the answer and run.json says
"interrupted". Any other error is recorded in run.json as "failed" and raised.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from ipsolve.services.run_folder import RunFolder, record_failure


class StopRequested(Exception):
    """Raised inside the run when `should_stop()` says so; the run ends like Ctrl-C."""


@dataclass
class RestoreResult:
    folder: RunFolder
    nfe: int                # network evaluations made
    elapsed_s: float
    interrupt: BaseException | None  # the KeyboardInterrupt / StopRequested that ended the run early, or None

    @property
    def stopped(self) -> bool:
        return self.interrupt is not None


def run_restore_job(measurement, model, options, out_dir, record: dict, *, device, clean=None, on_preview=None,
                    on_nfe=None, should_stop=None) -> RestoreResult:
    """Restore `measurement` with `model` into the folder `out_dir`; return how it went.

    options: outer, inner, budget, solver, eta, eta_b, step_size, weight, clip_x0, step_schedule, batch,
    samples, estimate, vanilla, schedule, seed (a `restore_request.RestoreRequest`); record: what run.json starts with
    (`restore_request.run_record`).
    clean: the clean image (C, H, W) in [0, 1] when known (the strip then shows each preview's PSNR).
    on_preview(preview, path) is called after each preview file is written, on_nfe(nfe) after every
    network evaluation; should_stop() is polled after every evaluation.
    """
    import torch

    from ipsolve.figures import measurement_picture
    from ipsolve.restore import restore

    folder = RunFolder(out_dir, measurement=measurement_picture(measurement.y, measurement.op), clean=clean,
                       estimate=getattr(options, "estimate", "sample"))
    folder.start(record)
    start = time.perf_counter()
    done = [0]

    def after_preview(preview):
        with _held():
            path = folder.add_preview(preview, time.perf_counter() - start)
        if on_preview is not None:
            on_preview(preview, path)

    def after_nfe(nfe):
        done[0] = nfe
        if on_nfe is not None:
            on_nfe(nfe)
        if should_stop is not None and should_stop():
            raise StopRequested()

    interrupt = None
    try:
        restore(measurement, model, options.outer, options.inner, budget=options.budget, solver=options.solver,
                eta=options.eta, eta_b=options.eta_b, step_size=options.step_size, weight=options.weight,
                batch=options.batch, vanilla=options.vanilla, schedule=options.schedule, clip_x0=options.clip_x0,
                step_schedule=options.step_schedule, samples=getattr(options, "samples", 1),
                generator=torch.Generator(device).manual_seed(options.seed),
                on_preview=after_preview, on_nfe=after_nfe)
    except (KeyboardInterrupt, StopRequested) as stop:
        interrupt = stop
    except Exception as error:
        record_failure(folder, error)
        raise
    elapsed_s = time.perf_counter() - start
    with _held(reraise=False):
        folder.finish({"nfe": done[0], "interrupted": interrupt is not None, "elapsed_s": round(elapsed_s, 3)})
    return RestoreResult(folder, done[0], elapsed_s, interrupt)


def _held(reraise: bool = True):
    """Ctrl-C / SIGTERM held during a block of file writes (signals exist only in the main thread)."""
    from ipsolve.services.interrupts import deferred_interrupt

    if threading.current_thread() is threading.main_thread():
        return deferred_interrupt(reraise=reraise)
    return contextlib.nullcontext()
