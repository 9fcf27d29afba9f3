"""The `ipsolve` command: restore, degrade, generate, eval (`ipsolve --help`).

Noise levels on the command line are in [0, 1] pixel units (DDRM's --sigma_0 convention) and are
converted once to model units (×2, the model space being [-1, 1]). Bad input gives one line
`ipsolve: error: …` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ipsolve import __version__
from ipsolve.cli_support import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, check_writable_folder, deferred_interrupt,
                                 existing_file, image_size, natural_int, one_line, positive_int, resolve_device,
                                 unit_float)

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
        print(f"ipsolve: error: {one_line(error)}", file=sys.stderr)
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
    parser.add_argument("--sigma-y", type=unit_float, metavar="S",
                        help="measurement noise in [0, 1] pixel units (model units are twice this)")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed (without a sidecar)")
    parser.add_argument("--model", default="embedded",
                        help="embedded (default: 1x32x32 MNIST digits, shipped), celeba_hq, "
                        "gaussian:CxHxW (exact prior), a checkpoint file or a diffusers folder")
    parser.add_argument("--outer", type=positive_int, default=4, metavar="S", help="outer steps (default 4)")
    parser.add_argument("--inner", type=positive_int, default=5, metavar="I",
                        help="network calls per inner DDRM run (default 5)")
    parser.add_argument("--budget", type=positive_int, metavar="NFE",
                        help="stop after this many network calls, shared over the inner runs that fit "
                        "(none is cut short; at least one inner run; default outer x inner)")
    parser.add_argument("--eta", type=unit_float, default=0.85, help="DDRM eta (default 0.85)")
    parser.add_argument("--eta-b", type=unit_float, default=1.0, help="DDRM eta_b (default 1.0)")
    parser.add_argument("--seed", type=natural_int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="N", help="samples per input (a grid)")
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
        with deferred_interrupt() as pending:
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
    with deferred_interrupt():
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
    mask = None if args.mask is None else str(existing_file(args.mask, "mask"))
    check_writable_folder(args.out)

    from ipsolve.measurement import read_measurement  # the checks above run before these slow imports
    from ipsolve.models import load_model
    from ipsolve.restore import check_model_fits, preview_marks

    device = resolve_device(args.device)
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
        return existing_file(name, "measurement")
    task = name.partition(":")[2] or "sr4"
    example = EXAMPLES / f"digit_{task}.png"
    if not Path(f"{example}.json").is_file():
        shipped = sorted(f"example:{p.name.removeprefix('digit_').removesuffix('.png.json')}"
                         for p in EXAMPLES.glob("digit_*.png.json"))
        raise ValueError(f"no shipped example {name!r}; there are: {', '.join(shipped) or 'none'}")
    return example


# ---------------------------------------------------------------- degrade

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
    parser.add_argument("--seed", type=natural_int, default=0, help="seed of the noise and the random inp mask")
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
