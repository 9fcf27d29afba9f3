"""`ipsolve generate`: its arguments, and the lines it prints around the generate service
(`ipsolve.services.generate_run`). Imported only when the command runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipsolve.generation import INNER_SAMPLERS
from ipsolve.services.values import device_name, folder_name, guidance_scale, natural_int, positive_int, seed_int

GENERATE_EPILOG = """\
outputs in DIR (a generation with the same settings replaces what an earlier one there recorded it
wrote; a run with other settings is refused unless --overwrite; files no ipsolve run wrote are never replaced):
  preview_{step:02d}_nfe{nfe:03d}.png  the n candidates after each outer step, written the moment they exist
  final.png     the last preview;  strip.png  the previews side by side (one row per candidate)
  anytime.gif   the previews as an animation;  run.json  arguments, model, grids, feedback, NFE, seed
NFE counts guided evaluations: a classifier-free guidance pair (one batched call) counts once.
Human feedback after outer step K: --pick K:0,3 keeps candidates 0 and 3 (replicated over the batch),
--prompt-at K TEXT / --class-at K N changes the conditioning of the later steps, --interactive asks.
Models: sd15 ($IPSOLVE_WEIGHTS/stable-diffusion-v1-5), dit ($IPSOLVE_WEIGHTS/DiT-XL-2-256), embedded,
a checkpoint or a diffusers folder (see docs/generation.md). Ctrl-C keeps the latest preview as final.png.
"""


def add_generate_arguments(parser):
    """The options of `ipsolve generate`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = GENERATE_EPILOG
    parser.add_argument("--model", default="embedded",
                        help="sd15, dit, embedded (default: 1x32x32 MNIST digits, shipped), a checkpoint "
                        "or a diffusers folder")
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument("--prompt", help="text prompt (Stable Diffusion)")
    condition.add_argument("--class", dest="class_label", type=natural_int, metavar="N",
                           help="class label (DiT: ImageNet class 0…999)")
    parser.add_argument("--outer", type=positive_int, default=4, metavar="S", help="outer steps (default 4)")
    parser.add_argument("--inner", type=positive_int, default=20, metavar="I",
                        help="network calls per inner run (default 20)")
    parser.add_argument("--n", type=positive_int, default=4, metavar="N", help="candidates (default 4)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=folder_name, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--guidance", type=guidance_scale, metavar="W",
                        help="classifier-free guidance scale (default: 7.5 for Stable Diffusion, 1.5 for DiT)")
    parser.add_argument("--inner-sampler", choices=INNER_SAMPLERS,
                        help="inner sampler (default: ddim for Stable Diffusion and pixel models, ddpm for DiT)")
    parser.add_argument("--budget", type=positive_int, metavar="NFE",
                        help="stop after this many network calls, shared over the inner runs that fit "
                        "(none is cut short; from one inner run up to outer x inner; default outer x inner)")
    parser.add_argument("--pick", action="append", default=[], metavar="K:I,J",
                        help="after outer step K keep candidates I, J, … (repeatable)")
    parser.add_argument("--picks", metavar="FILE", help='JSON file of picks, like {"2": [0, 3]}')
    parser.add_argument("--prompt-at", nargs=2, action="append", default=[], metavar=("K", "TEXT"),
                        help="after outer step K use prompt TEXT (repeatable)")
    parser.add_argument("--class-at", nargs=2, action="append", default=[], metavar=("K", "N"),
                        help="after outer step K use class N (repeatable)")
    parser.add_argument("--interactive", action="store_true",
                        help="after each outer step, ask at the terminal which candidates to keep")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="when DIR holds a run with other settings, replace what that run recorded it wrote")
    parser.add_argument("--force", action="store_true", help="run even when the estimate says it cannot fit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_generate(args) -> int:
    """Plan (everything checked, nothing written), then sample, writing every preview as it comes; return
    the exit code."""
    from ipsolve.services.generate_run import GenerateRequest, plan_generation, run_generation_plan
    from ipsolve.services.interrupts import exit_code_for

    plan = plan_generation(GenerateRequest.from_options(args))
    request = plan.request
    result = run_generation_plan(plan)
    folder = result.folder
    if result.interrupt is not None:
        print(f"ipsolve: interrupted after NFE {result.nfe}: "
              f"{'kept the latest preview as final.png' if folder.previews else 'no preview yet'}", file=sys.stderr)
        return exit_code_for(result.interrupt)
    print(f"{Path(request.out) / 'final.png'}: {len(folder.previews)} previews of {request.n} candidates, "
          f"{result.nfe} NFE, {result.elapsed_s:.1f} s")
    return 0
