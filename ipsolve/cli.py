"""The `ipsolve` command: restore, degrade, generate, eval (`ipsolve --help`).

Noise levels on the command line are in [0, 1] pixel units (DDRM's --sigma_0 convention) and are
converted once to model units (×2, the model space being [-1, 1]). Bad input gives one line
`ipsolve: error: …` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipsolve import __version__
from ipsolve.config import SOLVERS
from ipsolve.cli_support import (EXIT_BAD_INPUT, check_writable_folder, device_name,
                                 exit_code_for, existing_file, folder_name, handle_sigterm_as_interrupt, image_size,
                                 one_line, positive_float, positive_int, resolve_device, seed_int,
                                 unit_float)

EXAMPLES = Path(__file__).parent / "examples"
EXAMPLE_CLEAN = EXAMPLES / "digit_clean.png"  # the clean digit every shipped example was degraded from
LAZY_COMMANDS = {  # imported only when run, so their dependencies never break restore / degrade
    # name: (module, add-arguments function, run function, one-line help)
    "generate": ("ipsolve.generation", "add_generate_arguments", "run_generate_command",
                 "sample images with (nested) diffusion"),
    "eval": ("ipsolve.evaluation", "add_eval_arguments", "run_eval_command",
             "evaluate solvers over a dataset: PSNR / LPIPS / FID at every NFE budget"),
    "studio": ("ipsolve.studio", "add_studio_arguments", "run_studio_command",
               "a local web page to watch, stop and steer restoration and generation (ipsolve[studio])"),
}


def main(argv=None) -> int:
    """Run the command line; return the exit code (0, 2 for bad input, 130 on Ctrl-C, 143 on SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    handle_sigterm_as_interrupt()
    try:
        args = build_parser(_command_in(argv)).parse_args(argv)
        code = args.run(args)
        return code if isinstance(code, int) else 0
    except (ValueError, OSError) as error:
        print(f"ipsolve: error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:
        print("ipsolve: interrupted", file=sys.stderr)
        return exit_code_for(interrupt)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message on stderr."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"ipsolve: error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; generate and eval import their module only when `command` names them."""
    parser = _Parser(prog="ipsolve", description="Anytime restoration of degraded images with "
                     "pretrained diffusion models (Nested Diffusion with DDRM inside).")
    parser.add_argument("--version", action="version", version=f"ipsolve {__version__}")
    parser.set_defaults(run=lambda args: parser.error("choose a command: restore, degrade, generate or eval"))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_restore(commands)
    _add_degrade(commands)
    for name, (module_name, add_arguments, run, help_text) in LAZY_COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _import_command(name, module_name)
            getattr(module, add_arguments)(subparser)
            subparser.set_defaults(run=getattr(module, run))
    return parser


def _command_in(argv) -> str | None:
    return next((word for word in argv if not word.startswith("-")), None)


def _import_command(name, module_name):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"`ipsolve {name}` is unavailable: {error}") from None


# ---------------------------------------------------------------- restore

RESTORE_EPILOG = """\
the measurement's sidecar (MEASUREMENT.json, written by `ipsolve degrade`) says how it was made:
  task, noise level and mask come from it, and --task / --sigma-y / --mask may only repeat what it
  says (a disagreement is an error: to restore under other assumptions, copy the image without its
  sidecar and give them). Without a sidecar, --task is needed (and --mask for inpainting).
outputs in DIR (one run at a time; earlier ipsolve outputs there are replaced):
  preview_{step:02d}_nfe{nfe:03d}.png  every anytime image, written the moment it exists
  final.png     the last preview (a grid of samples with --batch)
  strip.png     the measurement, then the previews labelled with their NFE (and PSNR for the shipped
                examples), small images enlarged; one row per sample
  anytime.gif   the same, one preview a frame
  run.json      arguments, model, task, sigma_y in both units, seed, NFE per preview, time, version,
                status (running / done / interrupted / failed): it always says how far the run got
Ctrl-C or SIGTERM stops the run and keeps the latest preview as final.png (exit code 130 / 143).
Work that cannot fit (memory, more steps than the model's timesteps) is refused up front; --force runs it.
MEASUREMENT `example` (or `example:inp`) is a digit shipped with ipsolve; try
  ipsolve restore example --model embedded --outer 4 --inner 5 --out out/
"""


def _add_restore(commands):
    parser = commands.add_parser(
        "restore", help="restore a degraded image, writing anytime previews as they come",
        description="Restore a measurement with Nested Diffusion around an inverse-problem solver (DDRM by "
        "default), or with the plain solver (--vanilla).",
        epilog=RESTORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurement", metavar="MEASUREMENT",
                        help="measurement image (made by `ipsolve degrade`), `example[:sr4|inp]`, or a folder of "
                        "them (one run folder each under --out, plus index.csv; resumable; torchrun shards it)")
    parser.add_argument("--task", help="operator name (deno, sr4, sr16, color, inp, …); needed without a sidecar, "
                        "must match it with one")
    parser.add_argument("--sigma-y", type=unit_float, metavar="S",
                        help="measurement noise in [0, 1] pixel units (model units are twice this); default 0 "
                        "without a sidecar, must match it with one")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed, black = missing; "
                        "needed for inpainting without a sidecar, must match it with one")
    parser.add_argument("--model", default="embedded",
                        help="embedded (default: 1x32x32 MNIST digits, shipped), celeba_hq, "
                        "gaussian:CxHxW (exact prior), a checkpoint file or a diffusers folder")
    parser.add_argument("--outer", type=positive_int, default=4, metavar="S", help="outer steps (default 4)")
    parser.add_argument("--inner", type=positive_int, default=5, metavar="I",
                        help="network calls per inner run (default 5)")
    parser.add_argument("--solver", choices=SOLVERS, default="ddrm",
                        help="the inner (or, with --vanilla, the plain) solver: ddrm (default) and ddnm take the "
                        "SVD tasks (deno, srN, color, inp*, deblur_*, sr_bicubicN); pigdm also compositions such "
                        "as deblur_gauss+inp; dps every task, the nonlinear saturate included")
    parser.add_argument("--budget", type=positive_int, metavar="NFE",
                        help="stop after this many network calls, shared over the inner runs that fit "
                        "(none is cut short; from one inner run up to outer x inner; default outer x inner)")
    parser.add_argument("--schedule", choices=("matched", "paper"),
                        help="nested schedule: matched (default: the first inner run is plain's own grid, later "
                        "runs on the tails of plain grids; docs/anytime_schedule.md) or paper (the released code's "
                        "evenly spaced grids)")
    parser.add_argument("--eta", type=unit_float, help="eta of ddrm, ddnm (default 0.85) or pigdm (default 1.0)")
    parser.add_argument("--eta-b", type=unit_float, help="eta_b of ddrm (default 1.0)")
    parser.add_argument("--step-size", type=positive_float, metavar="Z", help="step size of dps (default 1.0)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="N", help="samples per input (a grid)")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="B",
                        help="with a folder: measurements of one task solved together per forward pass (default 4)")
    parser.add_argument("--out", type=folder_name, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--vanilla", action="store_true",
                        help="the plain solver with the same budget; its x0 predictions at the same NFE as previews")
    parser.add_argument("--force", action="store_true", help="run even when the estimate says it cannot fit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_restore)


def run_restore(args) -> int:
    """Validate everything, then restore with a progress bar, writing every preview as it comes."""
    if Path(args.measurement).is_dir():
        return run_restore_folder(args)
    source, measurement, mask_file, model, device, marks = _restore_inputs(args)

    from ipsolve.imageio import load_image
    from ipsolve.progress import RunProgress
    from ipsolve.restore_run import run_restore_job

    progress = RunProgress(marks[-1], "restore", enabled=not args.quiet)
    try:
        result = run_restore_job(measurement, model, args, args.out,
                                 _run_record(args, source, model, measurement, mask_file, device), device=device,
                                 clean=load_image(EXAMPLE_CLEAN) if source.parent == EXAMPLES else None,
                                 on_preview=lambda preview, path: progress.preview(preview.step),
                                 on_nfe=progress.nfe)
    finally:
        progress.close()
    folder, nfe = result.folder, result.nfe
    if result.interrupt is not None:
        kept = (f"kept preview {folder.previews[-1]['step']} as final.png" if folder.previews
                else "no preview yet, nothing kept")
        print(f"ipsolve: interrupted after NFE {nfe}: {kept}", file=sys.stderr)
        return exit_code_for(result.interrupt)
    print(f"{folder.path / 'final.png'}: {len(folder.previews)} previews, {nfe} NFE, {result.elapsed_s:.1f} s")
    return 0


def run_restore_folder(args) -> int:
    """`ipsolve restore DIR --out OUT`: every measurement of DIR, one run folder each plus OUT/index.csv."""
    from ipsolve import distributed
    from ipsolve.batch_restore import BatchSettings, list_measurements, restore_folder
    from ipsolve.models import load_model
    from ipsolve.resources import check_fits, check_steps
    from ipsolve.restore import check_plan, check_schedule

    check_schedule(args.outer, args.inner, args.budget)
    if args.batch != 1:
        raise ValueError("--batch (samples per input) is for one measurement; with a folder use --batch-size")
    options = _checked_solver_options(args)
    mask = None if args.mask is None else str(existing_file(args.mask, "mask"))
    list_measurements(args.measurement)
    check_writable_folder(args.out)
    workers = distributed.start(args.device)
    try:
        model = load_model(args.model, device=workers.device)
        check_steps(model, args.outer, args.inner)
        if not args.vanilla:
            check_plan(model, args.solver, args.outer, args.inner, args.budget, args.schedule)
        if getattr(model, "image_shape", None):
            check_fits(model, tuple(model.image_shape), args.batch_size, workers.device, force=args.force)
        settings = BatchSettings(args.outer, args.inner, args.budget, args.solver, options, args.vanilla, args.seed,
                                 args.model, args.schedule)
        jobs = restore_folder(args.measurement, args.out, model,
                              lambda path: _read_for(args, path, mask, model, workers.device), settings,
                              batch_size=args.batch_size, workers=workers, progress=not args.quiet)
    finally:
        distributed.stop(workers)
    if not workers.is_main:
        return 0
    counts = {status: sum(job.status.startswith(status) for job in jobs) for status in ("done", "reused", "failed")}
    print(f"{Path(args.out) / 'index.csv'}: {len(jobs)} measurements, {counts['done']} restored, "
          f"{counts['reused']} reused, {counts['failed']} failed")
    return 0


def _read_for(args, source, mask, model, device):
    """One measurement of a folder, checked as `ipsolve restore FILE` checks it (ValueError / OSError)."""
    from ipsolve.restore import check_model_fits

    measurement, _ = _read_checked(args, source, mask)
    check_model_fits(model, tuple(measurement.op.input_shape), device)
    return measurement


def _read_checked(args, source, mask):
    """(measurement, its mask file or None): the sidecar rule applied, the solver able to take its task."""
    from ipsolve.measurement import has_sidecar, read_measurement, read_sidecar
    from ipsolve.restore import check_solver_takes

    sigma_y = None if args.sigma_y is None else 2 * args.sigma_y
    if has_sidecar(source):
        _check_agrees_with_sidecar(source, args.task, sigma_y, mask)
        measurement, mask = read_measurement(source), read_sidecar(source).mask_file
    else:
        _check_plain_image_arguments(source, args.task, mask)
        measurement = read_measurement(source, task=args.task, sigma_y=sigma_y, mask=mask)
    check_solver_takes(args.solver, measurement.op)
    return measurement, mask


def _checked_solver_options(args) -> dict:
    from ipsolve.restore import solver_options

    if args.vanilla and args.schedule is not None:
        raise ValueError("--schedule is for nested runs; --vanilla runs the plain solver: drop one of them")
    try:
        return solver_options(args.solver, eta=args.eta, eta_b=args.eta_b, step_size=args.step_size)
    except ValueError:
        raise ValueError(f"--solver {args.solver} takes no {_given_flags(args, args.solver)}") from None


def _restore_inputs(args):
    """(measurement path, measurement, its mask file or None, model, device, preview NFE marks), or
    ValueError / OSError.

    Everything is checked here, before anything is written."""
    from ipsolve.restore import check_schedule

    check_schedule(args.outer, args.inner, args.budget)
    _checked_solver_options(args)
    source = _measurement_path(args.measurement)
    mask = None if args.mask is None else str(existing_file(args.mask, "mask"))
    check_writable_folder(args.out)

    from ipsolve.models import load_model  # after the quick checks above: slow imports
    from ipsolve.resources import check_fits, check_steps
    from ipsolve.restore import check_model_fits, check_plan, preview_marks

    measurement, mask = _read_checked(args, source, mask)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    check_steps(model, args.outer, args.inner)
    if not args.vanilla:
        check_plan(model, args.solver, args.outer, args.inner, args.budget, args.schedule)
    check_model_fits(model, tuple(measurement.op.input_shape), device)
    check_fits(model, tuple(measurement.op.input_shape), args.batch, device, force=args.force)
    measurement = measurement._replace(y=measurement.y.to(device))
    return source, measurement, mask, model, device, preview_marks(args.outer, args.inner, args.budget)


def _given_flags(args, solver) -> str:
    from ipsolve.config import SOLVER_OPTIONS

    return ", ".join(f"--{name.replace('_', '-')}" for name in ("eta", "eta_b", "step_size")
                     if getattr(args, name) is not None and name not in SOLVER_OPTIONS[solver])


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


def _run_record(args, source, model, measurement, mask_file, device) -> dict:
    """What the run is made of: arguments as given and the values used (task, noise, mask, model)."""
    import torch

    sigma_y = float(measurement.sigma_y)
    image_shape = getattr(model, "image_shape", None)
    return {
        "ipsolve_version": __version__,
        "torch_version": torch.__version__,
        "arguments": {key: value for key, value in vars(args).items() if key != "run"},
        "measurement": str(Path(source).resolve()),
        "model": {"name": args.model, "image_shape": None if image_shape is None else list(image_shape)},
        "task": measurement.op.spec(),
        "mask": None if mask_file is None else str(Path(mask_file).resolve()),
        "solver": args.solver if args.vanilla else f"nested({args.solver})",
        "sigma_y": {"pixel": sigma_y / 2, "model": sigma_y},
        "seed": args.seed,
        "device": str(device),
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


# ---------------------------------------------------------------- degrade

def _check_inputs_survive(output: Path, inputs) -> None:
    """ValueError when writing OUT, OUT.json or OUT's mask would replace one of the input files."""
    from ipsolve.measurement import mask_path_for, sidecar_path

    written = [output, Path(sidecar_path(output)), Path(mask_path_for(output))]
    for source in filter(None, inputs):
        for path in written:
            if path.exists() and path.samefile(source):
                raise ValueError(f"writing {path} would replace the input {source}: choose another -o")


def _add_degrade(commands):
    parser = commands.add_parser(
        "degrade", help="make a measurement y = H x + noise from a clean image",
        description="Degrade a clean image and write the measurement image OUT plus its sidecar OUT.json "
        "(operator, noise in both units, mask). Channels follow the image: a gray image stays one channel "
        "(--gray makes a color image gray); colorization needs a color image.")
    parser.add_argument("image", metavar="IMAGE", help="clean image (PNG, JPEG, …)")
    parser.add_argument("--task", required=True, help="operator name: deno, sr4, sr16, color, inp, …")
    parser.add_argument("--sigma-y", type=unit_float, default=0.0, metavar="S",
                        help="noise standard deviation in [0, 1] pixel units (model units are twice this; default 0)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the noise and the random inp mask")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="measurement image to write (.png)")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed (default: random 50%%)")
    parser.add_argument("--size", type=image_size, metavar="HxW", help="resize the clean image first")
    parser.add_argument("--gray", action="store_true", help="convert the clean image to one gray channel")
    parser.set_defaults(run=run_degrade)


def run_degrade(args) -> int:
    """Validate everything, then write the measurement and its sidecar."""
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the measurement must be a .png file (lossless)")
    if output.is_dir():
        raise ValueError(f"{output} is a folder: name the measurement file to write")
    check_writable_folder(output.parent)
    source = existing_file(args.image, "image")
    mask_path = None if args.mask is None else existing_file(args.mask, "mask")
    if mask_path is not None and not args.task.split("+")[-1].startswith("inp"):
        raise ValueError(f"--mask is for inpainting (inp), not {args.task!r}")
    if args.task.split("+")[-1] == "inp_mask" and mask_path is None:
        raise ValueError("--task inp_mask needs --mask PNG (white = observed, black = missing)")
    _check_inputs_survive(output, [source, mask_path])

    import degradations  # the checks above run before these slow imports
    from ipsolve.degrade import degrade, resize
    from ipsolve.imageio import load_image
    from ipsolve.measurement import write_measurement

    image = load_image(source, mode="L" if args.gray else None)
    if args.size is not None:
        image = resize(image, args.size)
    mask = None if mask_path is None else degradations.load_mask(mask_path)
    y, op = degrade(image, args.task, 2 * args.sigma_y, seed=args.seed, mask=mask)
    write_measurement(output, y, op, 2 * args.sigma_y)
    print(f"{output}: {op.name} measurement of a {'x'.join(map(str, image.shape))} image, "
          f"sigma_y {args.sigma_y} pixel = {2 * args.sigma_y} model units")
    return 0
