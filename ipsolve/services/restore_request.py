"""A restore request and everything checked before it runs: the service behind `ipsolve restore` and the
studio's Restore tab.

`RestoreRequest` holds the options of a restore (the fields, names and defaults of `ipsolve restore`'s
arguments; noise in [0, 1] pixel units). `restore_inputs(request)` checks them all — schedule, solver
options, the measurement and its sidecar, the output folder (no input among its files, no file no run
wrote, an earlier run's settings: `out_folder`), the model, what fits — before anything is written, and
hands back the loaded `RestoreInputs` (the model from `ipsolve.models.load_model`, or from the caller's
`load_model`: the studio's models are loaded once); `run_restore_request(request, inputs, …)` then runs
`restore_run.run_restore_job` with run.json's record (`run_record`). `plan_restore(request)` makes the
one plan of `ipsolve restore`: a `RestorePlan` for a file (run by `run_restore_plan`), or for a folder
the `folder_restore.FolderRestorePlan` of every measurement in it (`plan_measurement_folder`).

Bad input raises ValueError / OSError with one line naming the command line's options (--task, --mask, …).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ipsolve import __version__
from ipsolve.services.checks import check_writable_folder, existing_file, resolve_device

EXAMPLES = Path(__file__).parent.parent / "examples"
EXAMPLE_CLEAN = EXAMPLES / "digit_clean.png"  # the clean digit every shipped example was degraded from


@dataclass(kw_only=True, frozen=True)
class RestoreRequest:
    """The options of one restore, as `ipsolve restore` takes them: same names, same defaults, in the
    order of its arguments (run.json records them as `arguments`). measurement: a file, `example[:TASK]`
    or a folder; sigma_y in [0, 1] pixel units; task / sigma_y / mask None: from the sidecar."""

    measurement: str
    task: str | None = None
    sigma_y: float | None = None
    mask: str | None = None
    model: str = "embedded"
    outer: int = 4
    inner: int = 5
    solver: str = "ddrm"
    budget: int | None = None
    schedule: str | None = None
    eta: float | None = None
    eta_b: float | None = None
    step_size: float | None = None
    weight: str | None = None
    clip_x0: bool | None = None
    step_schedule: str | None = None
    seed: int = 0
    batch: int = 1
    samples: int = 1
    estimate: str = "sample"
    batch_size: int = 4
    out: str
    device: str | None = None
    vanilla: bool = False
    overwrite: bool = False
    force: bool = False
    quiet: bool = False

    @classmethod
    def from_options(cls, options) -> RestoreRequest:
        """The request made of the same-named attributes of `options` (an argparse Namespace); others ignored."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)})


class RestoreInputs(NamedTuple):
    """A checked request, loaded: ready to run."""

    source: Path       # the measurement file
    measurement: object  # ipsolve.measurement.Measurement, on `device`
    mask_file: str | None
    model: object
    device: object     # torch.device
    marks: list        # the NFE of every preview


def restore_inputs(request: RestoreRequest, load_model=None) -> RestoreInputs:
    """The request checked and loaded, or ValueError / OSError.

    Everything is checked here, before anything is written. load_model(name, device) gives the model
    (default `ipsolve.models.load_model`; the studio passes its cache of loaded models)."""
    from ipsolve.restore import check_schedule

    check_schedule(request.outer, request.inner, request.budget)
    check_samples_options(request)
    checked_solver_options(request)
    source = _measurement_path(request.measurement)
    mask = None if request.mask is None else str(existing_file(request.mask, "mask"))
    check_writable_folder(request.out)

    from ipsolve.resources import check_fits  # after the quick checks above: slow imports
    from ipsolve.measurement import sidecar_path
    from ipsolve.restore import check_model_fits, preview_marks
    from ipsolve.services.out_folder import check_earlier_run, check_run_folder, check_spares_inputs

    if load_model is None:
        from ipsolve.models import load_model
    measurement, mask = read_checked(request, source, mask)
    check_spares_inputs(request.out, [source, sidecar_path(source), mask])
    check_run_folder(request.out)
    if not request.overwrite:
        check_earlier_run(request.out, "a restore", dataclasses.asdict(request), measurement=str(source.resolve()),
                          ignored={"measurement", "batch_size"}, defaults=EARLIER_DEFAULTS)
    device = resolve_device(request.device)
    model = load_model(request.model, device)
    check_runs_on(model, request)
    check_model_fits(model, tuple(measurement.op.input_shape), device)
    check_fits(model, tuple(measurement.op.input_shape), request.batch * request.samples, device,
               force=request.force)
    measurement = measurement._replace(y=measurement.y.to(device))
    return RestoreInputs(source, measurement, mask, model, device,
                         preview_marks(request.outer, request.inner, request.budget))


def run_restore_request(request: RestoreRequest, inputs: RestoreInputs, *, clean=None, on_preview=None, on_nfe=None,
                should_stop=None):
    """Restore the checked `inputs` into `request.out` (`restore_run.run_restore_job`); its RestoreResult."""
    from ipsolve.services.restore_run import run_restore_job

    return run_restore_job(inputs.measurement, inputs.model, request, request.out, run_record(request, inputs),
                           device=inputs.device, clean=clean, on_preview=on_preview, on_nfe=on_nfe,
                           should_stop=should_stop)


def example_clean(source):
    """The clean digit when `source` is one of the shipped examples (its strip then shows PSNR), else None."""
    from ipsolve.imageio import load_image

    return load_image(EXAMPLE_CLEAN) if Path(source).parent == EXAMPLES else None


@dataclass(frozen=True)
class RestorePlan:
    """`ipsolve restore FILE` checked and loaded (`plan_restore`): `run_restore_plan` only runs it."""
    request: RestoreRequest
    inputs: RestoreInputs
    clean: object  # the clean image of a shipped example (the strip then shows PSNR), else None


def plan_restore(request: RestoreRequest):
    """The plan of `request`: a `RestorePlan` for a file, a `folder_restore.FolderRestorePlan` for a folder;
    ValueError / OSError (one line) when it cannot run. Nothing is written."""
    if Path(request.measurement).is_dir():
        return plan_measurement_folder(request)
    inputs = restore_inputs(request)
    return RestorePlan(request, inputs, example_clean(inputs.source))


def run_restore_plan(plan: RestorePlan, *, on_preview=None, on_nfe=None):
    """Run a file's `plan` (`run_restore_request`); its RestoreResult."""
    return run_restore_request(plan.request, plan.inputs, clean=plan.clean, on_preview=on_preview, on_nfe=on_nfe)


def plan_measurement_folder(request: RestoreRequest):
    """The `folder_restore.FolderRestorePlan` of a request whose measurement is a folder: one run folder
    per measurement plus OUT/index.csv (`folder_restore.run_folder_plan` runs it)."""
    from ipsolve.restore import check_schedule
    from ipsolve.services.folder_restore import plan_folder_restore

    check_schedule(request.outer, request.inner, request.budget)
    check_samples_options(request)
    if request.batch != 1:
        raise ValueError("--batch (samples per input) is for one measurement; with a folder use --batch-size")
    options = checked_solver_options(request)
    if request.mask is not None:
        existing_file(request.mask, "mask")
    check_writable_folder(request.out)
    return plan_folder_restore(request, options)


ESTIMATES = ("sample", "mean")
# what an argument an earlier run.json lacks (or holds as None) stood for: runs older than --samples drew one
EARLIER_DEFAULTS = {"schedule": "matched", "samples": 1, "estimate": "sample"}


def check_samples_options(request: RestoreRequest) -> None:
    """ValueError (one line) unless --samples and --estimate go together: K ≥ 1, mean needs K ≥ 2, and
    --batch (a grid of draws) and --samples (K draws and their estimate) are not both above 1."""
    from solvers.estimates import check_samples

    check_samples(request.samples)
    if request.estimate not in ESTIMATES:
        raise ValueError(f"--estimate {request.estimate}: choose one of {', '.join(ESTIMATES)}")
    if request.estimate == "mean" and request.samples < 2:
        raise ValueError("--estimate mean needs --samples 2 or more")
    if request.samples > 1 and request.batch > 1:
        raise ValueError("--samples K draws K samples of the measurement (a grid, and with --estimate mean their "
                         "mean and std): drop --batch")


def check_runs_on(model, request: RestoreRequest) -> None:
    """ValueError unless `model` can take the request's steps (its timesteps) and, for a nested run, its plan."""
    from ipsolve.resources import check_steps
    from ipsolve.restore import check_plan

    check_steps(model, request.outer, request.inner)
    if not request.vanilla:
        check_plan(model, request.solver, request.outer, request.inner, request.budget, request.schedule)


def read_for(request: RestoreRequest, source, mask, model, device):
    """One measurement of a folder, checked as `ipsolve restore FILE` checks it (ValueError / OSError)."""
    from ipsolve.restore import check_model_fits

    measurement, _ = read_checked(request, source, mask)
    check_model_fits(model, tuple(measurement.op.input_shape), device)
    return measurement


def read_checked(request: RestoreRequest, source, mask):
    """(measurement, its mask file or None): the sidecar rule applied, the solver able to take its task."""
    from ipsolve.measurement import has_sidecar, read_measurement, read_sidecar
    from ipsolve.restore import check_solver_takes

    sigma_y = None if request.sigma_y is None else 2 * request.sigma_y
    if has_sidecar(source):
        _check_agrees_with_sidecar(source, request.task, sigma_y, mask)
        measurement, mask = read_measurement(source), read_sidecar(source).mask_file
    else:
        _check_plain_image_arguments(source, request.task, mask)
        measurement = read_measurement(source, task=request.task, sigma_y=sigma_y, mask=mask)
    check_solver_takes(request.solver, measurement.op)
    return measurement, mask


def checked_solver_options(request: RestoreRequest) -> dict:
    """The solver's options (eta, eta_b, step_size, weight, clip_x0, step_schedule) as
    `ipsolve.restore.solver_options` takes them (the given ones: the rest are the solver's per-task defaults)."""
    from ipsolve.restore import solver_options

    if request.vanilla and request.schedule is not None:
        raise ValueError("--schedule is for nested runs; --vanilla runs the plain solver: drop one of them")
    try:
        return solver_options(request.solver, eta=request.eta, eta_b=request.eta_b, step_size=request.step_size,
                              weight=request.weight, clip_x0=request.clip_x0, step_schedule=request.step_schedule)
    except ValueError:
        raise ValueError(f"--solver {request.solver} takes no {_given_flags(request, request.solver)}") from None


DPS_FLAGS = ("clip_x0", "step_schedule")  # dps's options besides step_size


def _given_flags(request: RestoreRequest, solver) -> str:
    from ipsolve.config import SOLVER_OPTIONS

    return ", ".join(f"--{name.replace('_', '-')}" for name in ("eta", "eta_b", "step_size", "weight", *DPS_FLAGS)
                     if getattr(request, name) is not None and name not in SOLVER_OPTIONS[solver])


def _check_agrees_with_sidecar(source, task, sigma_y, mask) -> None:
    from ipsolve.measurement import read_sidecar, sidecar_conflicts, sidecar_path

    flags = {"task": "--task", "sigma_y": "--sigma-y", "mask": "--mask"}
    for what, given, recorded in sidecar_conflicts(read_sidecar(source), task, sigma_y, mask):
        if what == "sigma_y":  # the command line speaks pixel units
            given, recorded = given / 2, recorded / 2
        raise ValueError(f"{flags[what]} {given} disagrees with {sidecar_path(source)} ({recorded}): drop "
                         f"{flags[what]}, or restore a copy of the image without its sidecar")


def _check_plain_image_arguments(source, task, mask) -> None:
    if task is None:
        raise ValueError(f"{source} has no sidecar {Path(source).name}.json: give --task (e.g. sr4, deno, inp) "
                         f"and --sigma-y, and --mask for inpainting")
    inpainting = task.split("+")[-1].startswith("inp")
    if inpainting and mask is None:
        raise ValueError(f"--task {task} on an image without sidecar needs --mask PNG (white = observed)")
    if mask is not None and not inpainting:
        raise ValueError(f"--mask is for inpainting (inp), not --task {task}")


def run_record(request: RestoreRequest, inputs: RestoreInputs) -> dict:
    """What the run is made of: the request as given and the values used (task, noise, mask, model)."""
    import torch

    from ipsolve.config import restore_defaults

    sigma_y = float(inputs.measurement.sigma_y)
    image_shape = getattr(inputs.model, "image_shape", None)
    return {
        "ipsolve_version": __version__,
        "torch_version": torch.__version__,
        "arguments": dataclasses.asdict(request),
        "measurement": str(Path(inputs.source).resolve()),
        "model": {"name": request.model, "image_shape": None if image_shape is None else list(image_shape)},
        "task": inputs.measurement.op.spec(),
        "mask": None if inputs.mask_file is None else str(Path(inputs.mask_file).resolve()),
        "solver": request.solver if request.vanilla else f"nested({request.solver})",
        "solver_options": restore_defaults(request.solver, inputs.measurement.op.name, checked_solver_options(request)),
        "sigma_y": {"pixel": sigma_y / 2, "model": sigma_y},
        "seed": request.seed,
        "samples": request.samples,
        "estimate": request.estimate,
        "device": str(inputs.device),
        "nfe": 0,
        "interrupted": False,
    }


def _measurement_path(name: str) -> Path:
    """The file `name`, or a shipped example: `example` (= example:sr4), `example:inp`, …"""
    if Path(name).exists() or not (name == "example" or name.startswith("example:")):
        return existing_file(name, "measurement")
    task = name.partition(":")[2] or "sr4"
    example = EXAMPLES / f"digit_{task}.png"
    if not Path(f"{example}.json").is_file():
        shipped = sorted(f"example:{p.name.removeprefix('digit_').removesuffix('.png.json')}"
                         for p in EXAMPLES.glob("digit_*.png.json"))
        raise ValueError(f"no shipped example {name!r}; there are: {', '.join(shipped) or 'none'}")
    return example
