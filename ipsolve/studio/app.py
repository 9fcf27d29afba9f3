"""The studio page (Gradio Blocks): widgets wired to `ipsolve.studio.events`, nothing else.

Long work goes through Gradio's queue (the runs share one concurrency group with as many workers as
models, and `events.Studio` lets one run at a time use a model); Stop and closing the tab do not queue:
they set the run's stop flag, and the run ends after its current network call.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry and no update check, whoever imports this

import gradio as gr  # noqa: E402

from ipsolve.config import SOLVERS  # noqa: E402
from ipsolve.studio import events  # noqa: E402
from ipsolve.studio.events import (EXAMPLE_CHOICES, TASKS, GenerateForm, RestoreForm, RestoreView,  # noqa: E402
                                   Studio, message, prepare_restore, start_generate)

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.answer img, .measurement img { width: 100% !important; height: 100% !important; object-fit: contain; }
#restore-message, #generate-message { font-weight: 600; }
"""
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts fetched from a CDN
RUN_GROUP = "runs"


def build(studio: Studio) -> gr.Blocks:
    """The page for `studio`."""
    workers = len(studio.models)
    with gr.Blocks(title="ipsolve studio", analytics_enabled=False) as page:
        gr.Markdown("# ipsolve studio\nAnytime restoration and generation with Nested Diffusion: every "
                    "preview appears the moment it exists; Stop keeps the latest one.")
        with gr.Tabs():
            with gr.Tab("Restore", id="restore"):
                restore_widgets(page, studio, workers)
            with gr.Tab("Generate", id="generate"):
                generate_widgets(page, studio, workers)
        def closed(request: gr.Request):
            studio.forget(_session(request))

        page.unload(closed)
    return page


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


# ---------------------------------------------------------------- restore tab

def restore_widgets(page, studio, workers):
    with gr.Row():
        with gr.Column(scale=1):
            example = gr.Dropdown(["(upload)", *EXAMPLE_CHOICES], value="(upload)", label="bundled example",
                                  elem_id="restore-example")
            image = gr.File(label="image (PNG, JPEG…)", type="filepath", elem_id="restore-image")
            treat_as = gr.Radio([("clean image: degrade it here", "clean"),
                                 ("measurement (with its sidecar)", "measurement")], value="clean",
                                label="the image is", elem_id="restore-treat-as")
            with gr.Row():
                task = gr.Dropdown(list(TASKS), value="sr4", label="task", allow_custom_value=True,
                                   elem_id="restore-task")
                sigma_y = gr.Number(0.05, label="σ_y (pixel units, [0, 1])", minimum=0, maximum=1)
                degrade_seed = gr.Number(0, label="degradation seed (noise, random mask)", precision=0)
            with gr.Accordion("sidecar and mask files", open=False):
                sidecar = gr.File(label="sidecar of a measurement (MEASUREMENT.png.json)", type="filepath")
                mask = gr.File(label="inpainting mask, white = observed (a clean image's or a measurement's)",
                               type="filepath")
            painted = gr.ImageMask(label="paint the region to fill (nothing painted = the task's own mask)",
                                   type="numpy", image_mode="RGBA", sources=[],
                                   transforms=[], eraser=False, layers=False, format="png", height=320,
                                   brush=_brush(),
                                   visible=False, elem_id="restore-brush", elem_classes=["pixelated"])
        with gr.Column(scale=1):
            model = gr.Dropdown(studio.models, value=studio.models[0], label="model")
            solver = gr.Dropdown(list(SOLVERS), value="ddrm", label="solver")
            with gr.Row():
                outer = gr.Number(4, label="outer steps", precision=0, minimum=1, elem_id="restore-outer")
                inner = gr.Number(5, label="inner steps (NFE per run)", precision=0, minimum=1,
                                  elem_id="restore-inner")
                budget = gr.Number(0, label="budget NFE (0 = outer x inner)", precision=0, minimum=0)
            with gr.Row():
                eta = gr.Textbox("", label="η (empty = the solver's default)", elem_id="restore-eta")
                seed = gr.Number(0, label="seed", precision=0, minimum=0)
                samples = gr.Number(1, label="samples (2 or more: their mean and uncertainty)", precision=0,
                                    minimum=1, elem_id="restore-samples")
            compare = gr.Checkbox(False, label="compare with vanilla (the plain solver's x̂₀ at the same NFE)")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="restore-start")
                stop = gr.Button("Stop", variant="stop", elem_id="restore-stop")
    status = gr.Markdown("", elem_id="restore-message")
    with gr.Row():
        measurement = gr.Image(label="measurement", type="filepath", interactive=False, height=256,
                               elem_classes=["pixelated", "measurement"], elem_id="restore-measurement")
        answer = gr.Image(label="current answer", type="filepath", interactive=False, height=384,
                          elem_classes=["pixelated", "answer"], elem_id="restore-answer")
        vanilla = gr.Image(label="vanilla at the same NFE", type="filepath", interactive=False, height=256,
                           elem_classes=["pixelated", "answer"], elem_id="restore-vanilla", visible=False)
    with gr.Row(visible=False) as estimate_row:
        mean = gr.Image(label="posterior mean", type="filepath", interactive=False, height=256,
                        elem_classes=["pixelated", "answer"], elem_id="restore-mean")
        std = gr.Image(label="uncertainty: per-pixel std of the samples", type="filepath", interactive=False,
                       height=256, elem_classes=["answer"], elem_id="restore-std")
    strip = gr.Gallery(label="anytime previews", columns=8, height="auto", elem_classes="pixelated",
                       elem_id="restore-strip", allow_preview=False)
    with gr.Row():
        final = gr.File(label="final PNG", interactive=False, elem_id="restore-final")
        archive = gr.File(label="run folder (.zip)", interactive=False, elem_id="restore-archive")
    outputs = [measurement, answer, vanilla, estimate_row, mean, std, strip, status, final, archive]

    def pick_example(choice):
        if choice not in EXAMPLE_CHOICES:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return tuple(None if path is None else str(path) for path in EXAMPLE_CHOICES[choice])

    example.change(pick_example, example, [image, treat_as, sidecar, mask], queue=False)

    def show_brush(path, treat, task_name):
        """A clean image to inpaint gets the brush, painted afresh whenever the image, its role or the task
        changes."""
        inpainting = bool(task_name) and task_name.split("+")[-1].startswith("inp")
        size = events.brush_size(path) if path and treat == "clean" and inpainting else None
        if size is None:
            return gr.ImageMask(value=None, visible=False)
        return gr.ImageMask(value=path, visible=True, brush=_brush(size))

    for chosen in (image, treat_as, task):
        chosen.change(show_brush, [image, treat_as, task], painted, queue=False)

    def run(request: gr.Request, *values):
        try:
            job = prepare_restore(studio, RestoreForm(*values))
        except (ValueError, OSError) as error:
            yield _restore_outputs(RestoreView(status=f"error: {message(error)}", running=False))
            return
        studio.set_job(_session(request), "restore", job)
        for view in job.views(studio):
            yield _restore_outputs(view)

    values = [image, treat_as, task, sigma_y, degrade_seed, sidecar, mask, painted, model, solver, outer, inner, budget,
              eta, seed, samples, compare]
    start.click(run, values, outputs, concurrency_limit=workers, concurrency_id=RUN_GROUP, show_progress="hidden")

    def stop_run(request: gr.Request):
        studio.stop(_session(request), "restore")

    stop.click(stop_run, None, None, queue=False)


def _brush(size="auto"):
    """The mask brush: red (visible on dark and light images; any painted pixel counts, whatever its colour),
    `size` image pixels wide."""
    return gr.Brush(colors=["#ff3b30"], default_color="#ff3b30", color_mode="fixed", default_size=size)


def _restore_outputs(view: RestoreView):
    return (view.measurement, gr.Image(value=view.answer, label=f"current answer · {view.answer_label}"
                                       if view.answer_label else "current answer"),
            gr.Image(value=view.vanilla, label=view.vanilla_label or "vanilla at the same NFE",
                     visible=view.vanilla is not None),
            gr.Row(visible=view.mean is not None),
            gr.Image(value=view.mean, label=view.mean_label or "posterior mean"), view.std,
            view.strip, view.status, view.final, view.archive)


# ---------------------------------------------------------------- generate tab

def generate_widgets(page, studio, workers):
    with gr.Row():
        model = gr.Dropdown(studio.models, value=studio.models[0], label="model")
        prompt = gr.Textbox("", label="prompt (Stable Diffusion)")
        class_label = gr.Textbox("", label="class (DiT: 0…999)")
    with gr.Row():
        n = gr.Number(4, label="candidates", precision=0, minimum=1, elem_id="generate-n")
        outer = gr.Number(4, label="outer steps", precision=0, minimum=1, elem_id="generate-outer")
        inner = gr.Number(5, label="inner steps", precision=0, minimum=1, elem_id="generate-inner")
        seed = gr.Number(0, label="seed", precision=0, minimum=0)
    with gr.Row():
        start = gr.Button("Start (first outer step)", variant="primary", elem_id="generate-start")
        step = gr.Button("Continue one step", elem_id="generate-continue")
        to_end = gr.Button("Run to the end", elem_id="generate-to-end")
        stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
    status = gr.Markdown("", elem_id="generate-message")
    candidates = gr.Gallery(label="candidates (click to keep)", columns=8, height="auto", elem_classes="pixelated",
                            elem_id="generate-candidates", allow_preview=False)
    with gr.Row():
        keep = gr.CheckboxGroup([], label="keep these candidates for the next steps (none: keep all)",
                                elem_id="generate-keep")
        next_cond = gr.Textbox("", label="prompt or class for the following steps (empty: unchanged)")
    with gr.Row():
        final = gr.File(label="final PNG", interactive=False, elem_id="generate-final")
        archive = gr.File(label="run folder (.zip)", interactive=False, elem_id="generate-archive")
    outputs = [candidates, keep, status, final, archive]

    def shown(view):
        choices = [str(i) for i in range(len(view.candidates))]
        return (view.candidates, gr.CheckboxGroup(choices=choices, value=[]), view.status, view.final, view.archive)

    def failed(error):
        return gr.skip(), gr.skip(), f"error: {message(error)}", gr.skip(), gr.skip()

    def begin(request: gr.Request, model_name, prompt_text, label, count, outer_steps, inner_steps, seed_value):
        try:
            session = start_generate(studio, _session(request), GenerateForm(
                model_name, prompt_text, label, count, outer_steps, inner_steps, seed_value))
            return shown(session.step())
        except (ValueError, OSError) as error:
            return failed(error)

    def current(request):
        session = studio.job(_session(request), "generate")
        if session is None:
            raise ValueError("start a run first")
        return session

    def one_step(request: gr.Request, kept, cond_text):
        try:
            return shown(current(request).step(keep=[int(i) for i in kept or []], cond_text=cond_text))
        except (ValueError, OSError) as error:
            return failed(error)

    def run_to_end(request: gr.Request, kept, cond_text):
        try:
            session = current(request)
            view = session.step(keep=[int(i) for i in kept or []], cond_text=cond_text)
            yield shown(view)
            while view.running:
                view = session.step()
                yield shown(view)
        except (ValueError, OSError) as error:
            yield failed(error)

    def toggle(kept, selected: gr.SelectData):
        index = str(selected.index)
        kept = list(kept or [])
        return sorted(set(kept) ^ {index}, key=int)

    start.click(begin, [model, prompt, class_label, n, outer, inner, seed], outputs, concurrency_limit=workers,
                concurrency_id=RUN_GROUP, show_progress="hidden")
    step.click(one_step, [keep, next_cond], outputs, concurrency_limit=workers, concurrency_id=RUN_GROUP,
               show_progress="hidden")
    to_end.click(run_to_end, [keep, next_cond], outputs, concurrency_limit=workers, concurrency_id=RUN_GROUP,
                 show_progress="hidden")
    def stop_run(request: gr.Request):
        return _stopped(studio, request)

    stop.click(stop_run, None, outputs, queue=False)
    candidates.select(toggle, keep, keep, queue=False)


def _stopped(studio, request):
    studio.stop(_session(request), "generate")
    session = studio.job(_session(request), "generate")
    if session is None:
        return gr.skip(), gr.skip(), "nothing to stop", gr.skip(), gr.skip()
    view = session.view()
    return gr.skip(), gr.skip(), view.status, view.final, view.archive


def serve(models, runs_dir, host="127.0.0.1", port=7860, device=None, loaded=None):
    """Build the page and serve it until Ctrl-C (prints the URL); loaded: {name: model} already loaded on
    `device`, which every run then shares (`events.Studio`)."""
    studio = Studio(models, runs_dir, device=device, loaded=loaded)
    page = build(studio)
    page.queue(default_concurrency_limit=len(studio.models))
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    print(f"ipsolve studio: http://{host}:{port}  (models: {', '.join(studio.models)}; runs in {studio.runs_dir})",
          flush=True)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                allowed_paths=[str(studio.runs_dir), str(events.EXAMPLES)], ssr_mode=False, quiet=True,
                theme=theme, css=CSS, footer_links=[], mcp_server=False)
