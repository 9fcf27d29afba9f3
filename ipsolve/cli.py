"""The `ipsolve` command: restore, degrade, generate, eval (`ipsolve --help`).

Noise levels on the command line are in [0, 1] pixel units (DDRM's --sigma_0 convention) and are
converted once to model units (×2, the model space being [-1, 1]). Bad input gives one line
`ipsolve: error: …` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from ipsolve import __version__

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXAMPLES = Path(__file__).parent / "examples"
LAZY_COMMANDS = {  # imported only when run, so their dependencies never break restore / degrade
    # name: (module, add-arguments function, run function, one-line help)
    "generate": ("ipsolve.generation", "add_generate_arguments", "run_generate_command",
                 "sample images with (nested) diffusion"),
    "eval": ("ipsolve.evaluation", "add_eval_arguments", "run_eval_command",
             "evaluate solvers over a dataset: PSNR / LPIPS / FID at every NFE budget"),
}


def main(argv=None) -> int:
    """Run the command line; return the exit code (0, 2 for bad input, 130 when interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command_in(argv)).parse_args(argv)
        code = args.run(args)
        return code if isinstance(code, int) else 0
    except (ValueError, OSError) as error:
        print(f"ipsolve: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ipsolve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


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


# ---------------------------------------------------------------- argument types

def _positive_int(text):
    return _number(text, int, lambda value: value >= 1, "a positive integer")


def _natural_int(text):
    return _number(text, int, lambda value: value >= 0, "a non-negative integer")


def _unit_float(text):
    return _number(text, float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def _number(text, kind, valid, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not valid(value):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _size(text):
    height, sep, width = text.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise argparse.ArgumentTypeError(f"must be HxW in pixels, like 256x256, got {text!r}")
    return int(height), int(width)


# ---------------------------------------------------------------- restore

RESTORE_EPILOG = """\
outputs in DIR (earlier ipsolve outputs there are replaced):
  preview_{step:02d}_nfe{nfe:03d}.png  every anytime image, written the moment it exists
  final.png     the last preview (a grid of samples with --batch)
  strip.png     the previews side by side (one row per sample)
  anytime.gif   the previews as an animation
  run.json      arguments, model, task, sigma_y in both units, seed, NFE per preview, time, version
Ctrl-C stops the run and keeps the latest preview as final.png (exit code 130).
MEASUREMENT `example` (or `example:inp`) is a digit shipped with ipsolve; try
  ipsolve restore example --model embedded --outer 4 --inner 5 --out out/
"""


def _add_restore(commands):
    parser = commands.add_parser(
        "restore", help="restore a degraded image, writing anytime previews as they come",
        description="Restore a measurement with Nested Diffusion (DDRM inner runs) or plain DDRM.\n"
        "The task, noise level and mask come from the measurement's sidecar (MEASUREMENT.json) unless given.",
        epilog=RESTORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurement", metavar="MEASUREMENT",
                        help="measurement image (made by `ipsolve degrade`), or `example[:sr4|inp]`")
    parser.add_argument("--task", help="operator name (deno, sr4, sr16, color, inp) when there is no sidecar")
    parser.add_argument("--sigma-y", type=_unit_float, metavar="S",
                        help="measurement noise in [0, 1] pixel units (model units are twice this)")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed (without a sidecar)")
    parser.add_argument("--model", default="embedded",
                        help="embedded (default: 1x32x32 MNIST digits, shipped), celeba_hq, "
                        "gaussian:CxHxW (exact prior), a checkpoint file or a diffusers folder")
    parser.add_argument("--outer", type=_positive_int, default=4, metavar="S", help="outer steps (default 4)")
    parser.add_argument("--inner", type=_positive_int, default=5, metavar="I",
                        help="network calls per inner DDRM run (default 5)")
    parser.add_argument("--budget", type=_positive_int, metavar="NFE",
                        help="stop after this many network calls, shortening the last inner run "
                        "(at least one inner run; default outer x inner)")
    parser.add_argument("--eta", type=_unit_float, default=0.85, help="DDRM eta (default 0.85)")
    parser.add_argument("--eta-b", type=_unit_float, default=1.0, help="DDRM eta_b (default 1.0)")
    parser.add_argument("--seed", type=_natural_int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=_positive_int, default=1, metavar="N", help="samples per input (a grid)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--vanilla", action="store_true",
                        help="plain DDRM with the same budget; its x0 predictions at the same NFE as previews")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_restore)


def run_restore(args) -> int:
    """Validate everything, then restore with a progress bar, writing every preview as it comes."""
    source, measurement, model, device, marks = _restore_inputs(args)

    import torch

    from ipsolve.progress import RestoreProgress
    from ipsolve.restore import restore
    from ipsolve.run_folder import RunFolder

    folder = RunFolder(args.out)
    folder.prepare()
    progress = RestoreProgress(marks[-1], enabled=not args.quiet)
    start = time.perf_counter()

    def on_preview(preview):
        with _deferred_interrupt() as pending:
            folder.add_preview(preview, time.perf_counter() - start)
        progress.preview(preview.step)
        if pending:
            raise KeyboardInterrupt

    interrupted = False
    try:
        restore(measurement, model, args.outer, args.inner, budget=args.budget, eta=args.eta, eta_b=args.eta_b,
                batch=args.batch, vanilla=args.vanilla, generator=torch.Generator(device).manual_seed(args.seed),
                on_preview=on_preview, on_nfe=progress.nfe)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    nfe, elapsed_s = progress.done, time.perf_counter() - start
    with _deferred_interrupt():
        folder.finish(_run_record(args, source, model, measurement, device, nfe, interrupted, elapsed_s))
    if interrupted:
        kept = (f"kept preview {folder.previews[-1]['step']} as final.png" if folder.previews
                else "no preview yet, nothing kept")
        print(f"ipsolve: interrupted after NFE {nfe}: {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{folder.path / 'final.png'}: {len(folder.previews)} previews, {nfe} NFE, {elapsed_s:.1f} s")
    return 0


def _restore_inputs(args):
    """(measurement path, measurement, model, device, preview NFE marks), or ValueError / OSError."""
    if args.budget is not None and args.budget < args.inner:
        raise ValueError(f"--budget {args.budget} is smaller than one inner run (--inner {args.inner})")
    source = _measurement_path(args.measurement)
    mask = None if args.mask is None else str(_existing_file(args.mask, "mask"))
    _check_writable_folder(args.out)

    from ipsolve.measurement import read_measurement  # the checks above run before these slow imports
    from ipsolve.models import load_model
    from ipsolve.restore import check_model_fits, preview_marks

    device = _device(args.device)
    sigma_y = None if args.sigma_y is None else 2 * args.sigma_y
    measurement = read_measurement(source, task=args.task, sigma_y=sigma_y, mask=mask)
    model = load_model(args.model, device=device)
    check_model_fits(model, tuple(measurement.op.input_shape), device)
    measurement = measurement._replace(y=measurement.y.to(device))
    return source, measurement, model, device, preview_marks(args.outer, args.inner, args.budget)


def _run_record(args, source, model, measurement, device, nfe, interrupted, elapsed_s) -> dict:
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
        "solver": "ddrm" if args.vanilla else "nested(ddrm)",
        "sigma_y": {"pixel": sigma_y / 2, "model": sigma_y},
        "seed": args.seed,
        "device": str(device),
        "nfe": nfe,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed_s, 3),
    }


def _measurement_path(name: str) -> Path:
    """The file `name`, or a shipped example: `example` (= example:sr4), `example:inp`, …"""
    if Path(name).exists() or not (name == "example" or name.startswith("example:")):
        return _existing_file(name, "measurement")
    task = name.partition(":")[2] or "sr4"
    example = EXAMPLES / f"digit_{task}.png"
    if not Path(f"{example}.json").is_file():
        shipped = sorted(f"example:{p.name.removeprefix('digit_').removesuffix('.png.json')}"
                         for p in EXAMPLES.glob("digit_*.png.json"))
        raise ValueError(f"no shipped example {name!r}; there are: {', '.join(shipped) or 'none'}")
    return example


def _existing_file(name: str, what: str) -> Path:
    path = Path(name)
    if not path.is_file():
        problem = f"is a folder, not a {what} file" if path.is_dir() else f"no such {what} file"
        raise FileNotFoundError(f"{name}: {problem}")
    return path


def _device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _check_writable_folder(path) -> None:
    """ValueError unless `path` is a folder we can write in, or one we can create; creates nothing."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot write to {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {path}: {existing} is not writable")


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C during a block so its files are complete; yields a list that is non-empty if it came."""
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------- degrade

def _add_degrade(commands):
    parser = commands.add_parser(
        "degrade", help="make a measurement y = H x + noise from a clean image",
        description="Degrade a clean image and write the measurement image OUT plus its sidecar OUT.json "
        "(operator, noise in both units, mask). Channels follow the image: a gray image stays one channel "
        "(--gray makes a color image gray); colorization needs a color image.")
    parser.add_argument("image", metavar="IMAGE", help="clean image (PNG, JPEG, …)")
    parser.add_argument("--task", required=True, help="operator name: deno, sr4, sr16, color, inp, …")
    parser.add_argument("--sigma-y", type=_unit_float, default=0.0, metavar="S",
                        help="noise standard deviation in [0, 1] pixel units (model units are twice this; default 0)")
    parser.add_argument("--seed", type=_natural_int, default=0, help="seed of the noise and the random inp mask")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="measurement image to write (.png)")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed (default: random 50%%)")
    parser.add_argument("--size", type=_size, metavar="HxW", help="resize the clean image first")
    parser.add_argument("--gray", action="store_true", help="convert the clean image to one gray channel")
    parser.set_defaults(run=run_degrade)


def run_degrade(args) -> int:
    """Validate everything, then write the measurement and its sidecar."""
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the measurement must be a .png file (lossless)")
    if output.is_dir():
        raise ValueError(f"{output} is a folder: name the measurement file to write")
    _check_writable_folder(output.parent)
    source = _existing_file(args.image, "image")
    mask_path = None if args.mask is None else _existing_file(args.mask, "mask")
    if mask_path is not None and not args.task.startswith("inp"):
        raise ValueError(f"--mask is for inpainting (inp), not {args.task!r}")

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


def _one_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
