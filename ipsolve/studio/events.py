"""What the studio page does, as plain Python the page calls (no Gradio here, so tests call it directly).

Every action parses the page's values (with the parsers of `ipsolve.services.values`, as the command
line does), calls the service the command line calls (`ipsolve.services`), and hands back what to show:

- restore: `prepare_restore(studio, form)` checks everything and writes the job's input (the uploaded
  measurement, or the clean image degraded on the page with `ipsolve.degrade`, written with its sidecar
  as `ipsolve degrade` writes it; a mask painted with the brush is written as input/drawn.mask.png and
  used as `--mask` is); the form becomes a `RestoreRequest`, checked by the service's `restore_inputs`
  with the model from `Studio.load_model` (each model loaded once); `RestoreJob.views()` then runs it
  (`run_restore_request`, the body of `ipsolve restore`) in a thread and yields a `RestoreView` after
  every preview. Same settings and seed → the same run folder as `ipsolve restore`, file for file.
  The form's samples K > 1 is `--samples K --estimate mean`: K posterior draws in one batch, and beside
  the answer (their grid) the posterior mean estimate and its per-pixel std.
- generate: `GenerateSession` holds one nested run of `ipsolve.generation.generate` made from a
  `GenerateRequest`, one outer step per call, applying the user's picks and prompt / class changes
  through `ipsolve.feedback.Feedback` (as `--pick` / `--prompt-at` do), writing the run folder with the
  pieces of `ipsolve.services.generate_run`; the folder gets picks.json and replay.txt, so `ipsolve
  generate --picks picks.json …` replays the run.

Bad input raises ValueError / OSError with one readable line (`message(error)`), and a job that fails
its checks leaves no folder behind.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import shlex
import shutil
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ipsolve.services.run_folder import estimate_files
from ipsolve.services.values import device_name, natural_int, positive_int, seed_int, unit_float

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASKS = ("sr4", "sr2", "deno", "inp", "inp_box", "deblur_gauss", "deblur_uni", "color")
SOLVER_CHOICES = ("ddrm", "ddnm", "pigdm", "dps")
EXAMPLE_CHOICES = {  # label → (image, treat as, sidecar, mask)
    "digit (clean)": (EXAMPLES / "digit_clean.png", "clean", None, None),
    "digit, 4x super-resolution measurement": (EXAMPLES / "digit_sr4.png", "measurement",
                                              EXAMPLES / "digit_sr4.png.json", None),
    "digit, inpainting measurement": (EXAMPLES / "digit_inp.png", "measurement", EXAMPLES / "digit_inp.png.json",
                                      EXAMPLES / "digit_inp.mask.png"),
}


def message(error: BaseException) -> str:
    """The one line the page shows for a refused input or a failed run."""
    from ipsolve.services.checks import one_line

    return one_line(error)


class Studio:
    """The server: the models it offers (each loaded once, then shared by every run), where runs go, one
    lock per model (one run at a time on it), and each browser session's current jobs (sessions never see
    each other's runs). loaded: {name: model} already loaded on `device` (`ipsolve studio` loads every
    model at start to check it), so the first run does not load it again."""

    def __init__(self, models, runs_dir, device=None, loaded=None):
        self.models = list(dict.fromkeys(models)) or ["embedded"]
        self.runs_dir = Path(runs_dir).resolve()
        self.device = device
        self._locks = {name: threading.Lock() for name in self.models}
        self._jobs: dict[str, dict] = {}  # session → {"restore": RestoreJob, "generate": GenerateSession}
        self._guard = threading.Lock()
        self._loaded = {}  # (name, device) → model
        self._loading = threading.Lock()
        if loaded:
            from ipsolve.services.checks import resolve_device

            on = str(resolve_device(device))
            self._loaded = {(name, on): model for name, model in loaded.items()}

    def load_model(self, name, device):
        """The model `name` on `device` (a torch.device), loaded by the first call (`ipsolve.models.load_model`)
        and shared by the later ones; a call made while it loads waits for it."""
        key = (name, str(device))
        with self._loading:
            if key not in self._loaded:
                from ipsolve.models import load_model

                self._loaded[key] = load_model(name, device=device)
            return self._loaded[key]

    def check_model(self, name) -> str:
        if name not in self.models:
            raise ValueError(f"model {name!r} is not offered here; choose one of {', '.join(self.models)}")
        return name

    def model_lock(self, name) -> threading.Lock:
        return self._locks[self.check_model(name)]

    def new_job_dir(self, kind: str) -> Path:
        """A fresh, not yet existing folder for one job: RUNS/KIND-YYYYmmdd-HHMMSS-XXXXXX."""
        return self.runs_dir / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def job(self, session: str, kind: str):
        with self._guard:
            return self._jobs.get(session, {}).get(kind)

    def set_job(self, session: str, kind: str, job) -> None:
        with self._guard:
            previous = self._jobs.setdefault(session, {}).get(kind)
            self._jobs[session][kind] = job
        if previous is not None and previous is not job:
            previous.stop()

    def stop(self, session: str, kind: str | None = None) -> None:
        """Stop the session's jobs (all of them when kind is None): the run ends after its current network
        call and keeps the latest preview."""
        with self._guard:
            jobs = self._jobs.get(session, {})
            chosen = [job for name, job in jobs.items() if kind in (None, name)]
        for job in chosen:
            job.stop()

    def forget(self, session: str) -> None:
        """The browser tab closed: stop its jobs and drop them."""
        self.stop(session)
        with self._guard:
            self._jobs.pop(session, None)


# ---------------------------------------------------------------- restore

@dataclass
class RestoreForm:
    """The restore tab's values. image: the uploaded file; treat_as "clean" (degrade it here with task,
    sigma_y in pixel units, degrade_seed, and for inpainting the mask uploaded or painted with the brush:
    `painted`, the brush editor's value) or "measurement" (with its sidecar, or task / sigma_y / mask
    given here). budget None or 0 = outer x inner; eta None = the solver's default."""

    image: str | None
    treat_as: str = "clean"
    task: str = "sr4"
    sigma_y: float = 0.05
    degrade_seed: int = 0
    sidecar: str | None = None
    mask: str | None = None
    painted: dict | None = None
    model: str = "embedded"
    solver: str = "ddrm"
    outer: int = 4
    inner: int = 5
    budget: int | None = None
    eta: float | None = None
    seed: int = 0
    samples: int = 1
    compare: bool = False


@dataclass
class RestoreView:
    """What the restore tab shows at one moment."""

    measurement: str | None = None            # the measurement image (as restored)
    answer: str | None = None                 # the current answer (latest preview file)
    answer_label: str = ""
    strip: list = field(default_factory=list)  # [(file, "NFE n"), …]
    vanilla: str | None = None                # the plain solver's x̂₀ at the same NFE (compare)
    vanilla_label: str = ""
    mean: str | None = None                   # samples K > 1: the posterior mean estimate of the latest preview
    mean_label: str = ""
    std: str | None = None                    # … and its per-pixel std, colour-mapped with a scale bar
    status: str = ""
    running: bool = False
    final: str | None = None                  # final.png, once the run ended
    archive: str | None = None                # the run folder as a .zip, once the run ended
    run_dir: str | None = None


class RestoreJob:
    """One checked restore (and its plain-solver twin with `compare`), ready to run."""

    def __init__(self, job_dir: Path, request, inputs, clean, twin=None):
        self.job_dir, self.request, self.inputs, self.clean, self.twin = job_dir, request, inputs, clean, twin
        self._stop = threading.Event()
        self.result = None
        self.twin_result = None
        self.error: BaseException | None = None
        self._labels = {}

    @property
    def run_dir(self) -> Path:
        return Path(self.request.out)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, on_preview=None):
        """Run to the end (or until stopped) in this thread; on_preview(kind, preview, path) per preview."""
        from ipsolve.services.restore_request import run_restore_request

        def one(request, inputs, kind):
            return run_restore_request(
                request, inputs, should_stop=self._stop.is_set,
                on_preview=None if on_preview is None else (lambda preview, path: on_preview(kind, preview, path)))

        twin_thread = None
        if self.twin is not None:
            def run_twin():
                try:
                    self.twin_result = one(*self.twin, "vanilla")
                except Exception as error:  # noqa: BLE001 - shown on the page
                    self.error = self.error or error
            twin_thread = threading.Thread(target=run_twin, daemon=True)
            twin_thread.start()
        try:
            self.result = one(self.request, self.inputs, "nested")
        except Exception as error:  # noqa: BLE001 - shown on the page
            self.error = error
            self.stop()
        if twin_thread is not None:
            twin_thread.join()
        return self.result

    def views(self, studio: Studio | None = None, poll_s: float = 0.05):
        """Run in a worker thread and yield a RestoreView at the start, after every preview and at the end.
        One run at a time per model: a second one waits (and says so). Closing the generator (the page
        went away) stops the run."""
        events: queue.Queue = queue.Queue()
        lock = studio.model_lock(self.request.model) if studio is not None else threading.Lock()
        view = RestoreView(measurement=str(self.measurement_picture()), running=True, run_dir=str(self.run_dir))
        try:
            if not lock.acquire(blocking=False):
                view.status = f"waiting for the model {self.request.model} (another run is using it)…"
                yield view
                while not lock.acquire(timeout=poll_s):
                    if self.stopping:
                        view.running, view.status = False, "stopped before it started"
                        yield view
                        return
            worker = None
            try:
                view.status = "running…"
                yield view
                worker = threading.Thread(target=self.run, args=(lambda *event: events.put(event),), daemon=True)
                worker.start()
                nested, vanilla = [], []
                while worker.is_alive() or not events.empty():
                    try:
                        kind, preview, path = events.get(timeout=poll_s)
                    except queue.Empty:
                        continue
                    (nested if kind == "nested" else vanilla).append((preview, path))
                    yield self._view(view, nested, vanilla, running=True)
                worker.join()
                yield self._view(view, nested, vanilla, running=False)
            finally:
                if worker is not None and worker.is_alive():  # the page went away mid-run
                    self.stop()
                    worker.join()
                lock.release()
        finally:
            self.stop()  # also when the page closed the generator mid-run

    def _view(self, view, nested, vanilla, running):
        view.running = running
        if nested:
            preview, path = nested[-1]
            view.answer = str(path)
            view.answer_label = self._label(preview, path)
            view.strip = [(str(p), self._label(pv, p)) for pv, p in nested]
            if self.request.estimate == "mean":
                mean, std = estimate_files(path)
                view.mean, view.std = str(mean), str(std)
                view.mean_label = f"posterior mean of {self.request.samples} samples · {self._label(preview, mean)}"
            same = [(pv, p) for pv, p in vanilla if pv.nfe <= preview.nfe]
            if same:
                view.vanilla, view.vanilla_label = str(same[-1][1]), "plain " + self._label(*same[-1])
        if running:
            view.status = (f"running… preview {len(nested)} at NFE {nested[-1][0].nfe}" if nested else "running…")
            return view
        if self.error is not None:
            view.status = f"error: {message(self.error)}"
        elif self.result is not None:
            folder = self.result.folder
            kept = (f"preview {folder.previews[-1]['step']} (NFE {folder.previews[-1]['nfe']})"
                    if folder.previews else "nothing (no preview yet)")
            view.status = (f"stopped after NFE {self.result.nfe}: kept {kept} as the answer" if self.result.stopped
                           else f"done: {len(folder.previews)} previews, {self.result.nfe} NFE, "
                                f"{self.result.elapsed_s:.1f} s")
            if folder.previews:
                view.final = str(folder.path / "final.png")
                view.answer = view.final
                if self.request.estimate == "mean":
                    view.mean, view.std = str(folder.path / "mean.png"), str(folder.path / "std.png")
            view.archive = str(zip_folder(folder.path, self.job_dir / f"{self.job_dir.name}.zip"))
        return view

    def _label(self, preview, path):
        if path not in self._labels:  # each preview file is scored once
            self._labels[path] = self._new_label(preview, path)
        return self._labels[path]

    def _new_label(self, preview, path):
        text = f"NFE {preview.nfe}"
        if self.clean is not None:
            from ipsolve.imageio import load_image
            from ipsolve.metrics import psnr

            shown = load_image(path)  # the written preview (a grid with several samples: the first is scored)
            clean = self.clean
            if shown.shape == clean.shape:
                text += f" · PSNR {float(psnr(shown[None], clean[None])[0]):.2f} dB"
        return text

    def measurement_picture(self) -> Path:
        return Path(self.inputs.source)


def prepare_restore(studio: Studio, form: RestoreForm) -> RestoreJob:
    """Check the form and write the job's input; ValueError / OSError (one line) on bad input, leaving
    nothing behind."""
    studio.check_model(form.model)
    if not form.image:
        raise ValueError("upload an image or pick an example first")
    if form.treat_as not in ("clean", "measurement"):
        raise ValueError(f"treat the image as clean or as a measurement, not {form.treat_as!r}")
    job_dir = studio.new_job_dir("restore")
    try:
        from ipsolve.services.restore_request import restore_inputs

        clean = None
        if form.treat_as == "clean":
            clean, measurement_file = _degrade_here(form, job_dir / "input")
            given = {}
        else:
            if painted_mask(form.painted) is not None:
                raise ValueError("the brush paints the mask of a clean image; a measurement's mask is its "
                                 "sidecar's or an uploaded file: clear the brush")
            measurement_file, given = _copy_measurement(form, job_dir / "input")
        request = restore_request_for(studio, form, measurement_file, job_dir / "run", given)
        inputs = restore_inputs(request, studio.load_model)
        twin = None
        if form.compare:  # the same checked inputs and model: the two runs only read them
            twin = (dataclasses.replace(request, out=str(job_dir / "vanilla"), vanilla=True), inputs)
        return RestoreJob(job_dir, request, inputs, clean, twin)
    except (ValueError, OSError) as error:
        shutil.rmtree(job_dir, ignore_errors=True)
        uploads = {form.image: form.image, form.sidecar: form.sidecar, form.mask: form.mask,
                   job_dir / "input" / "measurement.png": form.image, job_dir / "input" / "given.mask.png": form.mask,
                   job_dir / "input" / "measurement.mask.png": form.mask}
        raise ValueError(_named_as_uploaded(message(error), uploads)) from None
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def _named_as_uploaded(text: str, uploads: dict) -> str:
    """The message with the server's paths of uploaded files replaced by the names the user gave them."""
    for path, upload in sorted(uploads.items(), key=lambda item: -len(str(item[0]))):
        if path and upload:
            text = text.replace(str(path), Path(upload).name)
    return text


def _degrade_here(form, input_dir: Path):
    """The uploaded clean image degraded as `ipsolve degrade` does; (clean image, measurement file)."""
    from ipsolve.degrade import degrade
    from ipsolve.imageio import load_image
    from ipsolve.measurement import write_measurement

    if not form.task:
        raise ValueError("choose a task")
    sigma_y = _checked(unit_float, form.sigma_y, "σ_y")
    seed = _checked(seed_int, form.degrade_seed, "the degradation seed")
    image = load_image(form.image)
    input_dir.mkdir(parents=True)
    mask = _degrade_mask(form, tuple(image.shape[1:]), input_dir)
    y, op = degrade(image, form.task, 2 * sigma_y, seed=seed, mask=mask)
    measurement_file = input_dir / "measurement.png"
    write_measurement(measurement_file, y, op, 2 * sigma_y)
    from ipsolve.imageio import save_image

    save_image(image, input_dir / "clean.png")
    return image, measurement_file


def _degrade_mask(form, size, input_dir: Path):
    """The mask to degrade the clean image with, read as `ipsolve degrade --mask` reads it (white =
    observed): the uploaded file, or the one painted with the brush, written as input/drawn.mask.png so
    that `ipsolve degrade --mask input/drawn.mask.png` makes the same measurement; None: the task's own."""
    drawn = painted_mask(form.painted)
    if drawn is None and not form.mask:
        return None
    if drawn is not None and form.mask:
        raise ValueError("a mask is both painted and uploaded: clear the brush or remove the mask file")
    what = "a painted mask" if drawn is not None else "a mask"
    if not form.task.split("+")[-1].startswith("inp"):
        raise ValueError(f"{what} is for inpainting (inp, inp_box, inp_mask), not {form.task}")
    mask_file = form.mask
    if drawn is not None:
        if drawn.shape != size:
            raise ValueError(f"the painted mask is {drawn.shape[0]}x{drawn.shape[1]} but the image is "
                             f"{size[0]}x{size[1]}: clear the brush and paint on the image again")
        if not drawn.any():
            raise ValueError("the brush painted every pixel: leave some of the image observed")
        mask_file = input_dir / "drawn.mask.png"
        write_mask(drawn, mask_file)
    import degradations

    return degradations.load_mask(mask_file)


def painted_mask(editor):
    """The mask painted with the brush: bool (H, W) numpy array, True = observed, False where any layer
    of the editor's value (a dict with background, layers, composite: RGBA numpy arrays) has a pixel with
    alpha > 0; None when nothing is painted. The layers are the canvas's size, checked by the caller."""
    import numpy as np

    layers = [np.asarray(layer) for layer in ((editor or {}).get("layers") or []) if layer is not None]
    painted = [layer[..., 3] > 0 for layer in layers]
    if not any(layer.any() for layer in painted):
        return None
    return ~np.logical_or.reduce(painted)


def brush_size(image) -> int | None:
    """The mask brush's width for the image file: a sixteenth of its smaller side (2 pixels on the digit);
    None when the file is not an image (no brush then: Start says what is wrong)."""
    from PIL import Image

    try:
        with Image.open(image) as opened:
            return max(1, min(opened.size) // 16)
    except (OSError, ValueError):
        return None


def write_mask(mask, path: Path) -> None:
    """A mask file as `ipsolve degrade --mask` reads it: white (255) = observed, black (0) = missing."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def _copy_measurement(form, input_dir: Path):
    """The uploaded measurement (and its sidecar and mask) copied into the job; (file, the request's task,
    sigma_y and mask when there is no sidecar to say them)."""
    from ipsolve.imageio import load_image

    load_image(form.image)  # a readable image, or one line saying it is not
    input_dir.mkdir(parents=True)
    measurement_file = input_dir / "measurement.png"
    shutil.copyfile(form.image, measurement_file)
    given = {}
    if form.sidecar:
        try:
            sidecar = json.loads(Path(form.sidecar).read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"the sidecar is not a measurement sidecar (JSON): {error}") from None
        if not isinstance(sidecar, dict):
            raise ValueError("the sidecar is not a measurement sidecar (a JSON object)")
        if sidecar.get("mask"):
            if not form.mask:
                raise ValueError(f"the sidecar names the mask {sidecar['mask']}: upload it too")
            sidecar["mask"] = "measurement.mask.png"
            shutil.copyfile(form.mask, input_dir / "measurement.mask.png")
        (input_dir / "measurement.png.json").write_text(json.dumps(sidecar, indent=2))
    else:
        given = {"task": form.task, "sigma_y": _checked(unit_float, form.sigma_y, "--sigma-y:")}
        if form.mask:
            shutil.copyfile(form.mask, input_dir / "given.mask.png")
            given["mask"] = str(input_dir / "given.mask.png")
    return measurement_file, given


def restore_request_for(studio, form, measurement_file, out_dir, given):
    """The form as the `RestoreRequest` `ipsolve restore` would make of the same settings: each value
    checked by the command line's own parser, a bad one refused in its words (`--outer: must be …`)."""
    from ipsolve.config import SOLVERS
    from ipsolve.services.restore_request import RestoreRequest

    if form.solver not in SOLVERS:
        raise ValueError(f"--solver: invalid choice: {form.solver!r} (choose from {', '.join(map(repr, SOLVERS))})")
    budget = None if form.budget in (None, "", 0) else _checked(positive_int, form.budget, "--budget:")
    samples = _checked(positive_int, form.samples, "--samples:")
    eta = (_checked(unit_float, _text(form.eta).strip(), "--eta:")
           if form.eta is not None and str(form.eta).strip() else None)
    return RestoreRequest(
        measurement=str(measurement_file), model=form.model, solver=form.solver,
        outer=_checked(positive_int, form.outer, "--outer:"), inner=_checked(positive_int, form.inner, "--inner:"),
        seed=_checked(seed_int, form.seed, "--seed:"), samples=samples, estimate="mean" if samples > 1 else "sample",
        budget=budget, eta=eta, out=str(out_dir), quiet=True, device=_device(studio), **given)


def _device(studio):
    return None if studio.device is None else _checked(device_name, studio.device, "--device:")


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _checked(parse, value, what):
    """parse (one of `ipsolve.services.values`) applied to the value as typed; ValueError "WHAT reason"."""
    import argparse

    try:
        return parse(_text(value))
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{what} {error}") from None


def zip_folder(folder: Path, archive: Path) -> Path:
    """The run folder's files (not its lock) in one .zip, written atomically."""
    from ipsolve.services.folder_lock import LOCK_NAME
    from ipsolve.imageio import atomic_path

    with atomic_path(archive) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(Path(folder).iterdir()):
                if path.is_file() and path.name != LOCK_NAME and not path.name.startswith("."):
                    bundle.write(path, f"{Path(folder).name}/{path.name}")
    return archive


# ---------------------------------------------------------------- generate

@dataclass
class GenerateForm:
    model: str = "embedded"
    prompt: str = ""
    class_label: int | None = None
    n: int = 4
    outer: int = 4
    inner: int = 5
    seed: int = 0


@dataclass
class GenerateView:
    candidates: list = field(default_factory=list)  # [(file, "candidate i"), …] after the latest outer step
    step: int = 0
    steps: int = 0
    nfe: int = 0
    status: str = ""
    running: bool = True
    final: str | None = None
    archive: str | None = None
    run_dir: str | None = None


class GenerateSession:
    """One nested generation driven step by step from the page (the library's NestedRun + Feedback)."""

    def __init__(self, studio: Studio, form: GenerateForm):
        import torch

        from ipsolve.feedback import Choice, Feedback
        from ipsolve.generation import generate, model_family
        from ipsolve.resources import check_fits, check_steps
        from ipsolve.services.checks import resolve_device
        from ipsolve.services.generate_run import conditioning

        studio.check_model(form.model)
        self.studio, self.form = studio, form
        self.job_dir = studio.new_job_dir("generate")
        self.request = request = generate_request_for(studio, form, self.job_dir / "run")
        self.device = device = resolve_device(request.device)
        self.model = model = studio.load_model(request.model, device)
        check_steps(model, request.outer, request.inner)
        check_fits(model, tuple(model.image_shape), request.n, device, force=False)
        self.family = model_family(model)
        cond, self.encode, self.parse_cond, _ = conditioning(request, model, self.family)
        self._choice = Choice()
        self.feedback = Feedback({}, {}, self.encode, ask=lambda preview: self._choice)
        with torch.no_grad():
            self.run = generate(model, request.outer, request.inner, request.n, cond=cond,
                                generator=torch.Generator(device).manual_seed(request.seed))
        self.steps = len(self.run.outer_timesteps)
        self.folder = None
        self.latest = None
        self.finished = False
        self._stop = threading.Event()
        self._start = None
        self._lock = threading.Lock()
        self.prompt_changes = []  # (step, text) for replay.txt

    @property
    def run_dir(self) -> Path:
        return Path(self.request.out)

    def stop(self) -> None:
        """Stop: the latest candidates stay the answer (the folder is finished at the next call or now)."""
        self._stop.set()
        if self._lock.acquire(blocking=False):
            try:
                self.finish(interrupted=not self.done)
            finally:
                self._lock.release()

    @property
    def done(self) -> bool:
        return self.latest is not None and self.latest.step >= self.steps

    def step(self, keep=None, cond_text=None) -> GenerateView:
        """Apply the user's choice to the candidates shown (keep indices, new prompt / class text), then run
        one outer step; the view shows the new candidates."""
        import torch

        from ipsolve.feedback import Choice, parse_indices

        with self._lock, self.studio.model_lock(self.request.model):
            if self.finished:
                return self.view("the run has ended: start a new one")
            if self._stop.is_set():
                self.finish(interrupted=not self.done)
                return self.view()
            if self.latest is not None:
                if self.done:
                    self.finish(interrupted=False)
                    return self.view()
                keep = parse_indices(keep) if isinstance(keep, str) and keep.strip() else (list(keep) if keep else None)
                if keep is not None and max(keep) >= self.request.n:
                    raise ValueError(f"candidate {max(keep)} does not exist (there are {self.request.n}, from 0)")
                cond = None
                if cond_text not in (None, "") and self.family != "pixel":
                    cond = self.parse_cond(str(cond_text).strip())
                    current = self.request.prompt if self.family == "sd" else self.request.class_label
                    last = self.prompt_changes[-1][1] if self.prompt_changes else current
                    cond = None if cond == last else cond
                self._choice = Choice(keep=keep, cond=cond)
                self.feedback(self.latest, self.run)
                if cond is not None:
                    self.prompt_changes.append((self.latest.step, cond))
                self._choice = Choice()
            if self.folder is None:
                self._start_folder()
            from ipsolve.services.generate_run import write_preview

            with torch.no_grad():
                preview = next(self.run)
            images = write_preview(self.folder, self.model, preview, time.perf_counter() - self._start)
            self.latest = preview
            self._write_candidates(images, preview.step)
            self._write_replay()
            if self.done or self._stop.is_set():  # Stop pressed during this step: it is the last one
                self.finish(interrupted=not self.done)
            return self.view()

    def _start_folder(self):
        from ipsolve.services.generate_run import run_record
        from ipsolve.services.run_folder import RunFolder

        self.folder = RunFolder(self.request.out)
        self._start = time.perf_counter()
        self.folder.start(run_record(self.request, self.model, self.family, self.run, self.feedback, str(self.device),
                                      False, 0.0))

    def _write_candidates(self, images, step):
        from ipsolve.imageio import save_image

        target = self.job_dir / "candidates" / f"step{step:02d}"
        self.candidate_files = []
        for index, image in enumerate(images):
            path = target / f"candidate_{index}.png"
            save_image(image, path)
            self.candidate_files.append(path)

    def _write_replay(self):
        """picks.json (for --picks) and replay.txt (the whole command) in the run folder."""
        from ipsolve.imageio import atomic_path

        picks = {str(event["step"]): event["keep"] for event in self.feedback.events if "keep" in event}
        with atomic_path(self.run_dir / "picks.json") as tmp:
            Path(tmp).write_text(json.dumps(picks, indent=2) + "\n")
        request = self.request
        words = ["ipsolve", "generate", "--model", request.model, "--n", str(request.n),
                 "--outer", str(request.outer), "--inner", str(request.inner), "--seed", str(request.seed),
                 "--picks", "picks.json"]
        if request.prompt is not None:
            words += ["--prompt", request.prompt]
        if request.class_label is not None:
            words += ["--class", str(request.class_label)]
        flag = "--prompt-at" if self.family == "sd" else "--class-at"
        for step, value in self.prompt_changes:
            words += [flag, str(step), str(value)]
        words += ["--out", "replayed"]
        with atomic_path(self.run_dir / "replay.txt") as tmp:
            Path(tmp).write_text("# run inside this folder to replay the run: same seed, picks and prompt changes\n"
                                 + shlex.join(words) + "\n")

    def finish(self, interrupted: bool) -> None:
        from ipsolve.services.generate_run import run_record

        if self.finished or self.folder is None:
            self.finished = True
            return
        self.finished = True
        record = run_record(self.request, self.model, self.family, self.run, self.feedback, str(self.device),
                             interrupted, time.perf_counter() - self._start)
        self.folder.finish(record)
        self.archive = zip_folder(self.run_dir, self.job_dir / f"{self.job_dir.name}.zip")

    def view(self, status: str | None = None) -> GenerateView:
        latest = self.latest
        view = GenerateView(steps=self.steps, run_dir=str(self.run_dir), running=not self.finished)
        if latest is not None:
            view.step, view.nfe = latest.step, latest.nfe
            view.candidates = [(str(path), f"candidate {i}") for i, path in enumerate(self.candidate_files)]
        if self.finished and self.folder is not None:
            view.final = str(self.run_dir / "final.png")
            view.archive = str(self.archive)
        if status is not None:
            view.status = status
        elif latest is None:
            view.status = "ready"
        elif self.finished:
            view.status = (f"done: {latest.step} of {self.steps} outer steps, {latest.nfe} NFE" if self.done
                           else f"stopped after outer step {latest.step} of {self.steps} ({latest.nfe} NFE): "
                                f"the latest candidates are the answer")
        else:
            view.status = (f"outer step {latest.step} of {self.steps} ({latest.nfe} NFE): click candidates to "
                           f"keep, change the prompt or class, then continue")
        return view


def generate_request_for(studio, form, out_dir):
    """The form as the `GenerateRequest` `ipsolve generate` would make of the same settings, each value
    checked by the command line's own parser and a bad one refused in its words (`--n: must be …`)."""
    from ipsolve.services.generate_run import GenerateRequest

    prompt = form.prompt.strip() if form.prompt and form.prompt.strip() else None
    class_label = None
    if form.class_label is not None and _text(form.class_label).strip():
        if prompt is not None:
            raise ValueError("--class: not allowed with argument --prompt")
        class_label = _checked(natural_int, _text(form.class_label).strip(), "--class:")
    return GenerateRequest(
        model=form.model, prompt=prompt, class_label=class_label, n=_checked(positive_int, form.n, "--n:"),
        outer=_checked(positive_int, form.outer, "--outer:"), inner=_checked(positive_int, form.inner, "--inner:"),
        seed=_checked(seed_int, form.seed, "--seed:"), out=str(out_dir), quiet=True, device=_device(studio))


def start_generate(studio: Studio, session: str, form: GenerateForm) -> GenerateSession:
    """A new generation for `session` (its earlier one is stopped); nothing is written until its first step."""
    generation = GenerateSession(studio, form)
    studio.set_job(session, "generate", generation)
    return generation
