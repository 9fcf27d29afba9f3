"""`ipsolve restore`: its arguments, and the lines it prints around the restore service
(`ipsolve.services.restore_request`)."""
from __future__ import annotations

import argparse
import sys

from ipsolve.config import CHOICE_OPTIONS, SOLVERS
from ipsolve.services.values import device_name, folder_name, positive_float, positive_int, seed_int, unit_float

EXIT_SOME_FAILED = 1  # a folder restore in which some measurements failed

RESTORE_EPILOG = """\
the measurement's sidecar (MEASUREMENT.json, written by `ipsolve degrade`) says how it was made:
  task, noise level and mask come from it, and --task / --sigma-y / --mask may only repeat what it
  says (a disagreement is an error: to restore under other assumptions, copy the image without its
  sidecar and give them). Without a sidecar, --task is needed (and --mask for inpainting).
outputs in DIR (one run at a time; a restore with the same settings replaces what an earlier one there
recorded it wrote; a run with other settings is refused unless --overwrite; files no ipsolve run wrote
are never replaced, nor any input):
  preview_{step:02d}_nfe{nfe:03d}.png  every anytime image, written the moment it exists
  final.png     the last preview (a grid of samples with --batch or --samples)
  strip.png     the measurement, then the previews labelled with their NFE (and PSNR for the shipped
                examples), small images enlarged; one row per sample
  anytime.gif   the same, one preview a frame
  run.json      arguments, model, task, sigma_y in both units, seed, NFE per preview, time, version,
                status (running / done / interrupted / failed): it always says how far the run got;
                samples and estimate (K and mean / sample)
with --samples K --estimate mean, also (K draws of the measurement in one batch, their mean and spread;
with a folder, in each measurement's run folder):
  preview_{step:02d}_nfe{nfe:03d}_mean.png  the posterior mean estimate of the K samples at that preview
  preview_{step:02d}_nfe{nfe:03d}_std.png   their per-pixel std, colour-mapped (viridis: dark = certain),
                enlarged, with a scale bar in [0, 1] pixel units
  mean.png, std.png  the same for the last preview
  a single sample gets sharper with more calls but not closer in PSNR; for PSNR use --estimate mean
Ctrl-C or SIGTERM stops the run and keeps the latest preview as final.png (exit code 130 / 143).
exit codes: 0 all done; 1 a folder in which some measurements failed (index.csv says why); 2 refused
before anything is written (bad input, or a folder in which none can be restored).
Work that cannot fit (memory, more steps than the model's timesteps) is refused up front; --force runs it.
MEASUREMENT `example` (or `example:inp`) is a digit shipped with ipsolve; try
  ipsolve restore example --model embedded --outer 4 --inner 5 --out out/
"""


def add_restore_command(commands):
    """`ipsolve restore`: its arguments (those of `RestoreRequest`) and its run function."""
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
    parser.add_argument("--step-size", type=positive_float, metavar="Z",
                        help="step size ζ of dps (default per task with the beta schedule: 0.3 for srN, 0.2 for "
                        "the rest; 1.0 with --step-schedule constant, the published DPS; docs/algorithms.md)")
    parser.add_argument("--step-schedule", choices=("constant", "beta"),
                        help="how dps spends ζ along the grid: beta (default; ζ times the step's β over the training "
                        "β, so one ζ serves every budget) or constant (ζ at every step, as published for 1000 steps)")
    parser.add_argument("--clip-x0", action=argparse.BooleanOptionalAction,
                        help="dps: clamp x0 to [-1, 1] in the step and the residual (default: on, as published)")
    parser.add_argument("--weight", choices=CHOICE_OPTIONS["weight"],
                        help="guidance weight of pigdm: code (default: the authors' released step), paper "
                        "(Algorithm 1 as printed) or score (the score-space step); docs/algorithms.md")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="N", help="samples per input (a grid)")
    parser.add_argument("--samples", type=positive_int, default=1, metavar="K",
                        help="posterior samples of each measurement, drawn together in one batch (a grid, "
                        "like --batch, which it replaces: not both above 1); with a folder, each image's K "
                        "draws share its batch (--batch-size measurements x K rows)")
    parser.add_argument("--estimate", choices=("sample", "mean"), default="sample",
                        help="sample (default): today's files; mean: also the posterior mean of the K samples "
                        "(mean.png, the PSNR-minded answer) and their per-pixel std (std.png) at every preview; "
                        "needs --samples 2 or more")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="B",
                        help="with a folder: measurements of one task solved together per forward pass (default 4)")
    parser.add_argument("--out", type=folder_name, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--vanilla", action="store_true",
                        help="the plain solver with the same budget; its x0 predictions at the same NFE as previews")
    parser.add_argument("--overwrite", action="store_true", help="when --out holds a run with other settings, "
                        "remove what that run recorded it wrote, then restore")
    parser.add_argument("--force", action="store_true", help="run even when the estimate says it cannot fit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_restore)


def run_restore(args) -> int:
    """Plan (everything checked, nothing written), then restore with a progress bar, writing every preview
    as it comes."""
    from ipsolve.services.restore_request import RestorePlan, RestoreRequest, plan_restore

    plan = plan_restore(RestoreRequest.from_options(args))
    if not isinstance(plan, RestorePlan):
        return run_restore_folder(plan)

    from ipsolve.services.interrupts import exit_code_for
    from ipsolve.services.progress import RunProgress
    from ipsolve.services.restore_request import run_restore_plan

    progress = RunProgress(plan.inputs.marks[-1], "restore", enabled=not plan.request.quiet)
    try:
        result = run_restore_plan(plan, on_preview=lambda preview, path: progress.preview(preview.step),
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


def run_restore_folder(plan) -> int:
    """`ipsolve restore DIR --out OUT`: run the plan of every measurement of DIR (one run folder each plus
    OUT/index.csv); exit 1 when some failed."""
    from ipsolve.services.folder_restore import run_folder_plan

    jobs = run_folder_plan(plan)
    if jobs is None:  # a worker process other than the main one
        return 0
    counts = {status: sum(job.status.startswith(status) for job in jobs) for status in ("done", "reused", "failed")}
    index = plan.out / "index.csv"
    print(f"{index}: {len(jobs)} measurements, {counts['done']} restored, "
          f"{counts['reused']} reused, {counts['failed']} failed")
    if counts["failed"]:
        print(f"ipsolve: {counts['failed']} of {len(jobs)} measurements failed: {index} says why", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
