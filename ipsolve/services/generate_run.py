"""Nested generation into a run folder: the service behind `ipsolve generate` and the studio's Generate tab.

`GenerateRequest` holds the options of a generation (the fields, names and defaults of `ipsolve
generate`'s arguments). `plan_generation(request)` checks them and loads the model into a `GeneratePlan`
(nothing written); `run_generation_plan(plan)` samples with `ipsolve.generation.generate` applying human
feedback (`ipsolve.feedback`: --pick / --picks, --prompt-at / --class-at, --interactive) and writes the run
folder: every preview the moment it exists, final.png, strip.png, anytime.gif and run.json (`run_record`).
The studio drives the same pieces step by step (`conditioning`, `write_preview`, `run_record`).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from ipsolve.feedback import Feedback, TerminalPrompt, load_picks, merge_picks, parse_pick_rules
from ipsolve.generation import PRESETS, generate, model_family, to_images


@dataclass(kw_only=True, frozen=True)
class GenerateRequest:
    """The options of one generation, as `ipsolve generate` takes them: same names, same defaults, in the
    order of its arguments (run.json records them as `arguments`). prompt_at / class_at: [[K, TEXT], …]."""

    model: str = "embedded"
    prompt: str | None = None
    class_label: int | None = None
    outer: int = 4
    inner: int = 20
    n: int = 4
    seed: int = 0
    out: str
    guidance: float | None = None
    inner_sampler: str | None = None
    budget: int | None = None
    pick: list = field(default_factory=list)
    picks: str | None = None
    prompt_at: list = field(default_factory=list)
    class_at: list = field(default_factory=list)
    interactive: bool = False
    device: str | None = None
    overwrite: bool = False
    force: bool = False
    quiet: bool = False

    @classmethod
    def from_options(cls, options) -> GenerateRequest:
        """The request made of the same-named attributes of `options` (an argparse Namespace); others ignored."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)})


@dataclass
class GenerateResult:
    folder: object          # the finished services.run_folder.RunFolder
    nfe: int
    elapsed_s: float        # as run.json records it
    interrupt: BaseException | None  # the KeyboardInterrupt that ended the run early, or None


def write_preview(folder, model, preview, elapsed_s):
    """Write one preview into the run folder `folder` as the images shown (decoded latents); return them."""
    images = to_images(model, preview.x0)
    # RunFolder writes model-space images: hand it the shown images mapped back.
    folder.add_preview(SimpleNamespace(x0=2 * images - 1, step=preview.step, nfe=preview.nfe), elapsed_s)
    return images


@dataclass(frozen=True)
class GeneratePlan:
    """`ipsolve generate` checked and loaded (`plan_generation`): `run_generation_plan` only runs it."""
    request: GenerateRequest
    model: object
    device: object          # torch.device
    family: str             # generation.model_family
    cond: object            # the model's conditioning, None when unconditional
    encode: object          # conditioning of a prompt / class, or None
    parse_cond: object      # text typed at --interactive → what `encode` takes
    schedule: dict          # {K: conditioning after outer step K} (--prompt-at / --class-at)
    picks: dict             # {K: candidates kept after outer step K} (--pick / --picks)


def plan_generation(request: GenerateRequest) -> GeneratePlan:
    """Everything checked and loaded — the budget rule of restore, feedback, the output folder, the model,
    what fits, the conditioning — or ValueError / OSError (one line). Nothing is written."""
    from ipsolve.models import load_model
    from ipsolve.resources import check_fits, check_steps
    from ipsolve.restore import check_schedule
    from ipsolve.services.checks import check_writable_folder, resolve_device
    from ipsolve.services.out_folder import check_earlier_run, check_run_folder, check_spares_inputs

    check_schedule(request.outer, request.inner, request.budget)  # restore's budget rule
    if request.interactive and not sys.stdin.isatty():
        raise ValueError("--interactive needs a terminal on stdin; in scripts use --pick or --picks")
    picks = merge_picks(parse_pick_rules(request.pick), load_picks(request.picks) if request.picks else {})
    check_writable_folder(request.out)
    check_spares_inputs(request.out, [request.picks])
    check_run_folder(request.out)
    if not request.overwrite:
        check_earlier_run(request.out, "a generation", dataclasses.asdict(request), ignored={"interactive"})

    device = resolve_device(request.device)
    model = load_model(request.model, device=device)
    check_steps(model, request.outer, request.inner)
    check_fits(model, tuple(model.image_shape), request.n, device, force=request.force)
    family = model_family(model)
    cond, encode, parse_cond, schedule = conditioning(request, model, family)
    with torch.no_grad():  # the grids the run will have, for the feedback's steps
        steps = len(_sampling(request, model, cond, device).outer_timesteps)
    Feedback(picks, schedule, encode).check(steps, request.n)
    return GeneratePlan(request, model, device, family, cond, encode, parse_cond, schedule, picks)


def _sampling(request: GenerateRequest, model, cond, device, callback=None):
    """The nested run `request` asks for (`generation.generate`), its noise drawn from the request's seed."""
    return generate(model, request.outer, request.inner, request.n, cond=cond, guidance=request.guidance,
                    inner=request.inner_sampler, budget=request.budget,
                    generator=torch.Generator(device).manual_seed(request.seed), callback=callback)


def run_generation_plan(plan: GeneratePlan) -> GenerateResult:
    """Sample as `plan` says, writing every preview as it comes (a progress bar unless quiet) and applying
    the feedback after each outer step."""
    from ipsolve.services.interrupts import deferred_interrupt
    from ipsolve.services.progress import RunProgress
    from ipsolve.services.run_folder import RunFolder, record_failure

    request, model, device, family = plan.request, plan.model, plan.device, plan.family
    ask = None
    if request.interactive:
        ask = TerminalPrompt({"sd": "prompt", "dit": "class"}.get(family), plan.parse_cond,
                             read=input, write=lambda text: print(text, file=sys.stderr))
    feedback = Feedback(plan.picks, plan.schedule, plan.encode, ask)

    folder = RunFolder(request.out)
    with torch.no_grad():
        run = _sampling(request, model, plan.cond, device, callback=lambda info: progress.nfe(info["nfe"]))
        start = time.perf_counter()
        folder.start(run_record(request, model, family, run, feedback, str(device), False, 0.0))
        progress = RunProgress(run.total_nfe, "generate", enabled=not (request.quiet or request.interactive))
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
    record = run_record(request, model, family, run, feedback, str(device), interrupt is not None,
                        time.perf_counter() - start)
    with deferred_interrupt(reraise=False):
        folder.finish(record)
    return GenerateResult(folder, run.nfe, record["elapsed_s"], interrupt)


def conditioning(request: GenerateRequest, model, family):
    """(cond, encode, parse_cond, schedule) from --prompt / --class and their schedules, checked against
    what the model takes."""
    if family == "sd":
        _forbid(request.class_label is not None or request.class_at, "--class and --class-at are for DiT models")
        if request.prompt is None:
            raise ValueError("a Stable Diffusion model needs --prompt TEXT")
        schedule = _schedule(request.prompt_at, str, "--prompt-at")
        return model.encode_prompt(request.prompt), model.encode_prompt, str, schedule
    if family == "dit":
        _forbid(request.prompt is not None or request.prompt_at, "--prompt and --prompt-at are for Stable Diffusion")
        if request.class_label is None:
            raise ValueError("a DiT model needs --class N")

        def parse_class(text):
            label = _integer(text, "a class")
            model.class_labels(label)  # range check
            return label

        schedule = _schedule(request.class_at, parse_class, "--class-at")
        return model.class_labels(request.class_label), model.class_labels, parse_class, schedule
    _forbid(request.prompt is not None or request.prompt_at or request.class_label is not None or request.class_at,
            f"--model {request.model} is unconditional: --prompt and --class need sd15 or dit")
    _forbid(request.guidance is not None, f"--guidance needs a conditional model (sd15 or dit), not {request.model}")
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


def run_record(request: GenerateRequest, model, family, run, feedback, device, interrupted, elapsed_s):
    """run.json's record: the request as given, the model, the grids, the feedback, NFE, seed and time."""
    from ipsolve import __version__

    preset = PRESETS[family]
    inner = request.inner_sampler or preset.inner
    conditional = request.prompt is not None or request.class_label is not None
    return {
        "ipsolve_version": __version__,
        "torch_version": torch.__version__,
        "arguments": dataclasses.asdict(request),
        "model": {"name": request.model, "family": family, "image_shape": list(model.image_shape)},
        "solver": f"nested({inner})",
        "inner_options": preset.inner_options[inner],
        "guidance": (preset.guidance if request.guidance is None else request.guidance) if conditional else None,
        "eta_outer": preset.eta_outer,
        "outer_timesteps": run.outer_timesteps,
        "inner_timesteps": run.inner_timesteps,
        "nfe_convention": "one per guided evaluation (a classifier-free guidance pair counts once)",
        "feedback": feedback.events,
        "seed": request.seed,
        "device": device,
        "nfe": run.nfe,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed_s, 3),
    }
