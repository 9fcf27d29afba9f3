"""Sampling images with Nested Diffusion (Algorithm 2 of the paper) — the `ipsolve generate` command.

`generate(model, outer_steps, inner_steps, n, cond=…)` is the library form: it picks the paper's
defaults for the model's family (`PRESETS`), wraps the model in classifier-free guidance for the inner
runs, and returns the `solvers.NestedRun` to iterate. The command adds model loading, conditioning from
--prompt / --class, human feedback (`ipsolve.feedback`) and the output folder: every preview the moment it
exists, final.png, strip.png, anytime.gif and run.json.

NFE convention: one network function evaluation per guided evaluation (ε_c and ε_u come from one batched
call of 2n images and count once), as in the paper.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

import solvers
from ipsolve.feedback import Feedback, TerminalPrompt, load_picks, merge_picks, parse_pick_rules
from ipsolve.guidance import guided

INNER_SAMPLERS = ("ddim", "ddpm", "dpm_solver")


@dataclass(frozen=True)
class Preset:
    """Defaults of one model family: the inner sampler and its options, guidance scale, outer η and the
    timestep grids. outer_grid(S, T) → S descending outer times; inner_grids[sampler](t, I) → I inner times."""

    inner: str
    guidance: float | None
    outer_grid: Callable[[int, int], list[int]]
    inner_grids: dict[str, Callable[[int, int], list[int]]]
    inner_options: dict = field(default_factory=lambda: {"ddim": {"eta": 0.85}, "ddpm": {},
                                                         "dpm_solver": {"order": 2, "variant": "2S"}})
    eta_outer: float = 0.0


def _released_dit_outer(steps, num_train):
    """1000 respaced into S+1 evenly spaced points, minus 0 (5 → 999, 799, 599, 400, 200)."""
    return solvers.outer_timesteps(steps, num_train - 1)


# The released code's grids: Stable Diffusion runs DDIM η = 0.85 inside on round(linspace(1, t, I)) (then to
# the clean image) under an outer DDIM η = 0 on round(linspace(1, 999, S+1)); DPM-Solver++(2S) inside on
# round(linspace(0, t, I+1)) minus 0. DiT runs DDPM with learned variance inside, I points on [0, t].
PRESETS = {
    "sd": Preset(inner="ddim", guidance=7.5, outer_grid=solvers.sd_outer_timesteps,
                 inner_grids={"ddim": solvers.sd_inner_timesteps, "ddpm": solvers.sd_inner_timesteps,
                              "dpm_solver": solvers.dpm_inner_timesteps}),
    "dit": Preset(inner="ddpm", guidance=1.5, outer_grid=_released_dit_outer,
                  inner_grids={"ddim": solvers.inner_timesteps, "ddpm": solvers.inner_timesteps,
                               "dpm_solver": solvers.dpm_inner_timesteps}),
    "pixel": Preset(inner="ddim", guidance=None, outer_grid=_released_dit_outer,
                    inner_grids={"ddim": solvers.inner_timesteps, "ddpm": solvers.inner_timesteps,
                                 "dpm_solver": solvers.dpm_inner_timesteps}),
}


def model_family(model):
    """'sd' (text-conditioned latent model), 'dit' (class-conditioned latent model) or 'pixel'."""
    if hasattr(model, "encode_prompt"):
        return "sd"
    if hasattr(model, "class_labels"):
        return "dit"
    return "pixel"


def generate(model, outer_steps, inner_steps, n=1, *, cond=None, guidance=None, inner=None, budget=None,
             generator=None, x_T=None, hook=None, callback=None, preset=None):
    """Nested Diffusion sampling of `n` candidates; returns the `solvers.NestedRun` (iterate for previews).

    cond: the model's conditioning (`model.encode_prompt(text)`, `model.class_labels(k)`), None for
    unconditional sampling. guidance: the CFG scale w (default: the preset's; ignored without cond).
    inner: "ddim", "ddpm" or "dpm_solver" (default: the preset's). Previews of latent models are latents:
    `model.decode(preview.x0)` gives images in [0, 1]. hook(preview, run) may call run.keep / run.set_cond
    (see `ipsolve.feedback.Feedback`).
    """
    preset = preset or PRESETS[model_family(model)]
    inner = inner or preset.inner
    if inner not in INNER_SAMPLERS:
        raise ValueError(f"inner sampler {inner!r} is not one of {', '.join(INNER_SAMPLERS)}")
    if guidance is not None and not hasattr(model, "null_cond"):
        raise ValueError("guidance needs a conditional model (Stable Diffusion or DiT)")
    scale = preset.guidance if guidance is None else guidance
    network = model if cond is None or scale is None else guided(model, scale, model.null_cond())
    device = next((p.device for p in model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return solvers.nested(network, inner=inner, inner_steps=inner_steps,
                          outer_timesteps=preset.outer_grid(outer_steps, len(model.alphas_cumprod)),
                          inner_grid=preset.inner_grids[inner], shape=(n, *model.image_shape), x_T=x_T,
                          dtype=torch.float32, device=device, budget=budget, eta_outer=preset.eta_outer,
                          generator=generator, cond=cond, hook=hook, callback=callback,
                          **preset.inner_options[inner])


def to_images(model, x0):
    """Anytime images in [0, 1] on the CPU: decoded latents, or pixel model space mapped to [0, 1]."""
    images = model.decode(x0) if hasattr(model, "decode") else (x0 + 1) / 2
    return images.detach().to("cpu", torch.float32).clamp(0, 1)


def write_preview(folder, model, preview, elapsed_s):
    """Write one preview into the run folder `folder` as the images shown (decoded latents); return them."""
    images = to_images(model, preview.x0)
    # RunFolder writes model-space images: hand it the shown images mapped back.
    folder.add_preview(SimpleNamespace(x0=2 * images - 1, step=preview.step, nfe=preview.nfe), elapsed_s)
    return images


# ---------------------------------------------------------------- the command

GENERATE_EPILOG = """\
outputs in DIR (earlier ipsolve outputs there are replaced):
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
    from ipsolve.cli_support import device_name, folder_name, natural_int, positive_int, seed_int

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
    parser.add_argument("--guidance", type=_guidance_scale, metavar="W",
                        help="classifier-free guidance scale (default: 7.5 for Stable Diffusion, 1.5 for DiT)")
    parser.add_argument("--inner-sampler", choices=INNER_SAMPLERS,
                        help="inner sampler (default: ddim for Stable Diffusion and pixel models, ddpm for DiT)")
    parser.add_argument("--budget", type=positive_int, metavar="NFE", help="stop after this many network calls")
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
    parser.add_argument("--force", action="store_true", help="run even when the estimate says it cannot fit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _guidance_scale(text):
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not 0 <= scale < float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return scale


def run_generate_command(args) -> int:
    """Validate everything, then sample, writing every preview as it comes; return the exit code."""
    from ipsolve.cli_support import check_writable_folder, deferred_interrupt, exit_code_for, resolve_device
    from ipsolve.models import load_model
    from ipsolve.progress import RunProgress
    from ipsolve.resources import check_fits, check_steps
    from ipsolve.run_folder import RunFolder, record_failure

    if args.interactive and not sys.stdin.isatty():
        raise ValueError("--interactive needs a terminal on stdin; in scripts use --pick or --picks")
    picks = merge_picks(parse_pick_rules(args.pick), load_picks(args.picks) if args.picks else {})
    check_writable_folder(args.out)

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    check_steps(model, args.outer, args.inner)
    check_fits(model, tuple(model.image_shape), args.n, device, force=args.force)
    family = model_family(model)
    cond, encode, parse_cond, schedule = _conditioning(args, model, family)
    ask = None
    if args.interactive:
        ask = TerminalPrompt({"sd": "prompt", "dit": "class"}.get(family), parse_cond,
                             read=input, write=lambda text: print(text, file=sys.stderr))
    feedback = Feedback(picks, schedule, encode, ask)

    folder = RunFolder(args.out)
    with torch.no_grad():
        run = generate(model, args.outer, args.inner, args.n, cond=cond, guidance=args.guidance,
                       inner=args.inner_sampler, budget=args.budget,
                       generator=torch.Generator(device).manual_seed(args.seed),
                       callback=lambda info: progress.nfe(info["nfe"]))
        feedback.check(len(run.outer_timesteps), args.n)
        start = time.perf_counter()
        folder.start(_run_record(args, model, family, run, feedback, str(device), False, 0.0))
        progress = RunProgress(run.total_nfe, "generate", enabled=not (args.quiet or args.interactive))
        interrupt = None
        try:
            for preview in run:
                with deferred_interrupt():
                    write_preview(folder, model, preview, time.perf_counter() - start)
                progress.preview(preview.step)
                if preview.step < len(run.outer_timesteps):
                    feedback(preview, run)
        except KeyboardInterrupt as stop:
            interrupt = stop
        except Exception as error:
            record_failure(folder, error)
            raise
        finally:
            progress.close()
    record = _run_record(args, model, family, run, feedback, str(device), interrupt is not None,
                         time.perf_counter() - start)
    with deferred_interrupt(reraise=False):
        folder.finish(record)
    if interrupt is not None:
        print(f"ipsolve: interrupted after NFE {run.nfe}: "
              f"{'kept the latest preview as final.png' if folder.previews else 'no preview yet'}", file=sys.stderr)
        return exit_code_for(interrupt)
    print(f"{Path(args.out) / 'final.png'}: {len(folder.previews)} previews of {args.n} candidates, {run.nfe} NFE, "
          f"{record['elapsed_s']:.1f} s")
    return 0


def _conditioning(args, model, family):
    """(cond, encode, parse_cond, schedule) from --prompt / --class and their schedules, checked against
    what the model takes."""
    if family == "sd":
        _forbid(args.class_label is not None or args.class_at, "--class and --class-at are for DiT models")
        if args.prompt is None:
            raise ValueError("a Stable Diffusion model needs --prompt TEXT")
        schedule = _schedule(args.prompt_at, str, "--prompt-at")
        return model.encode_prompt(args.prompt), model.encode_prompt, str, schedule
    if family == "dit":
        _forbid(args.prompt is not None or args.prompt_at, "--prompt and --prompt-at are for Stable Diffusion")
        if args.class_label is None:
            raise ValueError("a DiT model needs --class N")

        def parse_class(text):
            label = _integer(text, "a class")
            model.class_labels(label)  # range check
            return label

        schedule = _schedule(args.class_at, parse_class, "--class-at")
        return model.class_labels(args.class_label), model.class_labels, parse_class, schedule
    _forbid(args.prompt is not None or args.prompt_at or args.class_label is not None or args.class_at,
            f"--model {args.model} is unconditional: --prompt and --class need sd15 or dit")
    _forbid(args.guidance is not None, f"--guidance needs a conditional model (sd15 or dit), not {args.model}")
    return None, None, str, {}


def _forbid(condition, message):
    if condition:
        raise ValueError(message)


def _integer(text, what):
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {what}: give a whole number") from None


def _schedule(entries, parse, option):
    """[(K, VALUE), …] → {K: parsed VALUE}; each step once."""
    schedule = {}
    for step, value in entries:
        step = _integer(step, f"an outer step for {option}")
        if step in schedule:
            raise ValueError(f"{option} gives step {step} twice: give each step once")
        schedule[step] = parse(value)
    return schedule


def _run_record(args, model, family, run, feedback, device, interrupted, elapsed_s):
    from ipsolve import __version__

    preset = PRESETS[family]
    inner = args.inner_sampler or preset.inner
    conditional = args.prompt is not None or args.class_label is not None
    return {
        "ipsolve_version": __version__,
        "torch_version": torch.__version__,
        "arguments": {key: value for key, value in vars(args).items() if key != "run"},
        "model": {"name": args.model, "family": family, "image_shape": list(model.image_shape)},
        "solver": f"nested({inner})",
        "inner_options": preset.inner_options[inner],
        "guidance": (preset.guidance if args.guidance is None else args.guidance) if conditional else None,
        "eta_outer": preset.eta_outer,
        "outer_timesteps": run.outer_timesteps,
        "inner_timesteps": run.inner_timesteps,
        "nfe_convention": "one per guided evaluation (a classifier-free guidance pair counts once)",
        "feedback": feedback.events,
        "seed": args.seed,
        "device": device,
        "nfe": run.nfe,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed_s, 3),
    }
