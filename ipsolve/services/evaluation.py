"""`ipsolve eval`: solvers, plain and nested, over a folder of images, at every NFE budget of a config.

Data: the png / jpg / jpeg files of a folder sorted by name (`--limit N`: the first N), each scaled with
antialiased bicubic interpolation so it covers the model's image size, then center-cropped to it (gray
for 1-channel models, RGB for 3-channel ones). Dataset index i is the position in that sorted list.

Randomness: image i draws everything — its measurement noise, then the solver's draws — from its own
generator seeded `seed * 1_000_003 + i`, so a result does not depend on the batch or on how the indices
are sharded over processes (`torchrun --nproc-per-node K -m ipsolve eval …`: rank r takes i = r, r+K, …).

Batches: the indices of a process are cut into fixed batches of `batch_size` per run, so a resumed
evaluation computes every image in the same batch as an uninterrupted one and gets the same numbers.

Outputs in OUT (each file written atomically):
    evaluation.json                         the settings that made the folder and the names of its task
                                            and method folders (other settings are refused unless
                                            `overwrite`, which first removes the files the earlier
                                            evaluation recorded, and nothing else: see eval_plan)
    clean/00000.png                         the dataset image as evaluated (the FID reference set)
    TASK/METHOD/nfe010/00000.png, .json     the output after 10 NFEs and its record (PSNR, LPIPS, NFE and
                                            `key`, the fingerprint of what produced it); with `samples` K > 1
                                            the output is sample 0 of the K and the record also holds
                                            the mean's PSNR / LPIPS and its std coverage (`mean`)
    TASK/METHOD/nfe010/00000_mean.png       with K > 1: the mean of the K samples, as `ipsolve restore
                                            --samples K --estimate mean` saves it (mean.png)
    per_image.csv, results.csv, table.md, curves.png, results.json   (written by rank 0, see eval_report)
    failed.csv                              the images that could not be read, and why (only when some
                                            could not: they are left out of every table)

Samples: with `samples: K` every method draws K posterior samples of each image in one batch (rows
measurement-major, `solvers.estimates.repeat_for_samples`; nested runs `solvers.nested(samples=K)`): the
measurement noise is drawn first, once per image, then the K rows of image i draw in turn from image i's
generator. Sample 0 is evaluated as the output (one posterior sample, as with K = 1, though not the same
draws); the mean of the K (model space, then clamped and saved in 8 bits) is scored against the clean
image, and the std of the K (`solvers.estimates.estimate`, in [0, 1] pixel units) by the fraction of pixels
whose mean error lies within 1, 2, 3 std (`metrics.std_coverage`).

Resuming: a stored output is reused only when its record's key equals the key of the work asked for now:
the task and method parameters (a mask file by its bytes), the budget, K (above 1), the model's weights,
the bytes of the source image, the image's seed, the LPIPS network and the ipsolve version. Anything else
is recomputed (and counted).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

import solvers
import ipsolve
from solvers.estimates import estimate, repeat_for_samples, split_samples
from ipsolve import distributed, metrics, provenance
from ipsolve.config import EvalConfig, MethodConfig, TaskConfig, load_eval_config
from ipsolve.imageio import atomic_path, from_model, load_image, save_image, std_from_model, to_model
from ipsolve.services.checks import one_line
from ipsolve.services.folder_lock import folder_lock
from ipsolve.services.progress import CountProgress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Run:
    """One solver run per image whose outputs are the images after each of `budgets` NFEs."""
    task: TaskConfig
    method: MethodConfig
    budgets: tuple

    @property
    def split(self) -> tuple | None:
        """(outer, inner) steps of a nested run; None for vanilla DDRM."""
        return self.method.splits.get(self.budgets[0])


def plan_runs(config: EvalConfig) -> list[Run]:
    """Plain solvers: one run per budget. Nested: one run per distinct split, read at its budgets."""
    runs = []
    for task in config.tasks:
        for method in config.methods:
            if not method.nested:
                runs += [Run(task, method, (budget,)) for budget in config.budgets]
                continue
            by_split = {}
            for budget in config.budgets:
                by_split.setdefault(method.splits[budget], []).append(budget)
            runs += [Run(task, method, tuple(budgets)) for budgets in by_split.values()]
    return runs


def samples_part(samples: int) -> dict:
    """What K adds to a fingerprint (a record's key, the folder's settings): {"samples": K} above 1, nothing
    at K = 1, so what an ipsolve before `samples` stored (one draw each) keeps its key, and each K > 1 has its own."""
    return {"samples": samples} if samples > 1 else {}


class OutputLayout:
    """Paths inside the output folder; `samples` K > 1 stores a mean image beside every output."""

    def __init__(self, root, samples: int = 1):
        self.root = Path(root)
        self.samples = samples

    @property
    def manifest(self) -> Path:
        return self.root / "evaluation.json"

    def clean(self, index: int) -> Path:
        return self.root / "clean" / f"{index:05d}.png"

    def folder(self, task: str, method: str, budget: int) -> Path:
        return self.root / task / method / f"nfe{budget:03d}"

    def output(self, task: str, method: str, budget: int, index: int) -> Path:
        return self.folder(task, method, budget) / f"{index:05d}.png"

    def mean_output(self, task: str, method: str, budget: int, index: int) -> Path:
        return self.folder(task, method, budget) / f"{index:05d}_mean.png"

    def record(self, task: str, method: str, budget: int, index: int) -> Path:
        return self.output(task, method, budget, index).with_suffix(".json")

    def stored_key(self, run: Run, budget: int, index: int) -> str | None:
        """The key of the stored result, or None when one of its images or its record is missing or unreadable."""
        names = (run.task.name, run.method.name, budget, index)
        record = self.record(*names)
        images = [self.output(*names), *([self.mean_output(*names)] if self.samples > 1 else [])]
        if not (record.is_file() and all(image.is_file() for image in images)):
            return None
        try:
            return json.loads(record.read_text()).get("key")
        except (ValueError, AttributeError):
            return None


def list_images(folder, limit: int | None = None) -> list[Path]:
    """The images of `folder` sorted by name, the first `limit` of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        files = files[:limit]
    if not files:
        raise ValueError(f"{folder} holds no png / jpg images")
    return files


def fit_image(image: torch.Tensor, size: tuple) -> torch.Tensor:
    """Scale (C, h, w) so it covers `size` (H, W) (antialiased bicubic), then center-crop to it."""
    height, width = size
    scale = max(height / image.shape[1], width / image.shape[2])
    scaled = (max(height, round(image.shape[1] * scale)), max(width, round(image.shape[2] * scale)))
    if scaled != tuple(image.shape[1:]):
        image = F.interpolate(image[None], size=scaled, mode="bicubic", antialias=True)[0].clamp(0, 1)
    top, left = round((image.shape[1] - height) / 2), round((image.shape[2] - width) / 2)  # centred crop
    return image[:, top:top + height, left:left + width]


def load_clean(path: Path, shape: tuple) -> torch.Tensor:
    """Dataset image fitted to `shape` (C, H, W), quantised to 8 bits as its saved copy is."""
    channels = shape[0]
    if channels not in (1, 3):
        raise ValueError(f"evaluation needs a 1- or 3-channel model, got image shape {shape}")
    image = fit_image(load_image(path, mode="L" if channels == 1 else "RGB"), shape[1:])
    return (image * 255).round() / 255


def as_saved(x0: torch.Tensor) -> torch.Tensor:
    """Model-space outputs as their 8-bit PNG files hold them (what every metric measures)."""
    return (from_model(x0).clamp(0, 1).float() * 255).round() / 255


def solve(model, run: Run, clean: torch.Tensor, op, generators, capture: tuple = (),
          samples: int = 1) -> tuple[dict, dict]:
    """Measure `clean` ([0, 1] images) with `op` and run the solver: ({budget: (x0 in model space, NFE)},
    {n: the plain solver's x̂₀ after n calls} for each n of `capture` (plain solvers only)). With `samples`
    K > 1 every x0 holds K draws of each image (B·K rows, measurement-major)."""
    sigma_y = run.task.sigma_y_model
    y = op.H(to_model(clean))
    y = y + sigma_y * distributed.per_image_noise(generators)(tuple(y.shape)).to(y)  # one measurement an image
    noise = distributed.per_image_noise(generators, samples)  # then the solver's draws, K rows an image
    method = run.method
    measured = {"y": y, "forward": op} if method.solver == "dps" else {"y": y, "op": op, "sigma_y": sigma_y}
    if not method.nested:
        (budget,) = run.budgets
        measured["y"] = repeat_for_samples(y, samples)
        steps = solvers.ddrm_timesteps(budget, len(model.alphas_cumprod))
        seen = {}

        def keep(info):
            if info["nfe"] in capture:
                seen[info["nfe"]] = info["x0"].detach()

        x0 = getattr(solvers, method.solver)(model, timesteps=steps, noise=noise, callback=keep, **measured,
                                             **method.options)
        return {budget: (x0, len(steps))}, seen
    outer, inner = run.split
    results = {}
    previews = solvers.nested(model, inner=method.solver, outer_steps=outer, inner_steps=inner,
                              eta_outer=method.eta_outer, noise=noise, samples=samples if samples > 1 else None,
                              **measured, **method.options)
    for preview in previews:
        if preview.nfe in run.budgets:
            results[preview.nfe] = (preview.x0, preview.nfe)
        if len(results) == len(run.budgets):
            break
    return results, {}


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))


def method_parameters(run: Run, capture: tuple = ()) -> dict:
    """Everything about the solver of `run` that changes its stored record."""
    return {**run.method.as_dict(), "split": run.split, "budgets": list(run.budgets), "capture": list(capture)}


def captured_budgets(config: EvalConfig, run: Run) -> tuple:
    """The smaller budgets at which the largest plain run's x̂₀ is compared with its final (anytime
    consistency of the plain solver); () for nested runs and smaller plain runs."""
    if run.method.nested or run.budgets[-1] != config.budgets[-1]:
        return ()
    return tuple(b for b in config.budgets if b < run.budgets[-1])


def distances(images: torch.Tensor, reference: torch.Tensor, lpips_net: str | None) -> list[dict]:
    """Per image: MSE and LPIPS between [0, 1] images and a reference batch (LPIPS NaN without a network)."""
    mse = ((images - reference) ** 2).flatten(1).mean(1).tolist()
    lpips = (metrics.lpips_distance(images, reference, net=lpips_net).tolist() if lpips_net
             else [math.nan] * len(images))
    return [{"mse": m, "lpips": d} for m, d in zip(mse, lpips)]


class Evaluator:
    """Computes and stores every (run, image) pair of this process's shard whose stored result is
    missing or was produced by something else (see the module doc)."""

    def __init__(self, plan):
        self.config, self.model, self.images, self.layout = plan.config, plan.model, plan.images, plan.layout
        self.workers, self.shape, self.lpips_net, self.plan = plan.workers, plan.shape, plan.lpips_net, plan
        self.model_key = provenance.model_fingerprint(plan.model)
        self.computed = self.reused = self.replaced = 0
        self.failed = {}  # index → why its image could not be read (this process's shard)
        self._data_keys = {}

    def key(self, run: Run, budget: int, index: int) -> str:
        """The fingerprint of what produces the output of `run` at `budget` for image `index`."""
        if index not in self._data_keys:
            self._data_keys[index] = provenance.file_fingerprint(self.images[index])
        return provenance.fingerprint({
            "ipsolve": ipsolve.__version__, "model": self.model_key, "image_shape": list(self.shape),
            "task": dict(run.task.as_dict(), params=provenance.operator_key(run.task.params)),
            "method": method_parameters(run, captured_budgets(self.config, run)), "budget": budget,
            "data": self._data_keys[index], "seed": distributed.image_seed(self.config.seed, index),
            "lpips": self.lpips_net, **samples_part(self.config.samples)})

    def run_all(self) -> None:
        indices = [i for i in self.workers.shard(len(self.images)) if self._save_clean(i)]
        size = self.config.batch_size
        todo = []  # (run, batch, the indices of the batch to store)
        for run in plan_runs(self.config):
            for start in range(0, len(indices), size):
                batch = indices[start:start + size]
                pending = [i for i in batch if not self._is_current(run, i)]
                self.reused += len(batch) - len(pending)
                if pending:
                    todo.append((run, batch, pending))
        with CountProgress(sum(len(p) for _, _, p in todo), "eval", enabled=self.workers.is_main) as bar:
            for run, batch, pending in todo:
                self._run_batch(run, self.plan.operator(run.task.name), batch, pending)
                bar.update(len(pending))

    def _is_current(self, run: Run, index: int) -> bool:
        stored = [self.layout.stored_key(run, budget, index) for budget in run.budgets]
        if all(key == self.key(run, budget, index) for key, budget in zip(stored, run.budgets)):
            return True
        self.replaced += any(key is not None for key in stored)
        return False

    def _save_clean(self, index: int) -> bool:
        """Store the FID reference image, always from the current data (a cheap, atomic rewrite); False
        (and no clean image) when the image cannot be read: it is left out and counted as failed."""
        try:
            image = load_clean(self.images[index], self.shape)
        except (OSError, ValueError) as error:
            self.failed[index] = one_line(error)
            self.layout.clean(index).unlink(missing_ok=True)
            return False
        save_image(image, self.layout.clean(index))
        return True

    def _run_batch(self, run: Run, op, batch: list[int], pending: list[int]) -> None:
        """Solve the whole fixed `batch` (so its numbers never depend on what was resumed); store `pending`."""
        device, samples = self.workers.device, self.config.samples
        clean = torch.stack([load_clean(self.images[i], self.shape) for i in batch]).to(device)
        generators = [distributed.image_generator(self.config.seed, i) for i in batch]
        with torch.no_grad():
            results, trajectory = solve(self.model, run, clean, op, generators, captured_budgets(self.config, run),
                                        samples)
        def first(x0):  # sample 0 of each image
            return split_samples(x0, samples)[:, 0]

        final = as_saved(first(results[max(results)][0]))
        along = {b: distances(as_saved(first(x0)), final, self.lpips_net) for b, x0 in trajectory.items()}
        for budget, (x0, nfe) in results.items():
            restored = as_saved(first(x0))
            psnrs = metrics.psnr(restored, clean).tolist()
            lpipses = self._lpips(restored, clean)
            to_final = distances(restored, final, self.lpips_net) if run.method.nested else None
            means = self._mean_scores(x0, clean) if samples > 1 else None
            for row, index in enumerate(batch):
                if index not in pending:
                    continue
                names = (run.task.name, run.method.name, budget, index)
                save_image(restored[row], self.layout.output(*names))
                if means is not None:
                    save_image(means["image"][row], self.layout.mean_output(*names))
                write_json(self.layout.record(*names), {
                    "index": index, "source": self.images[index].name, "task": run.task.name,
                    "method": run.method.name, "budget": budget, "nfe": nfe, "split": run.split,
                    "seed": distributed.image_seed(self.config.seed, index), "samples": samples,
                    "psnr": psnrs[row], "lpips": lpipses[row], "to_final": to_final and to_final[row],
                    "x0_to_final": {str(b): along[b][row] for b in along}, "key": self.key(run, budget, index),
                    **({"mean": {name: values[row] for name, values in means.items() if name != "image"}}
                       if means is not None else {})})
        self.computed += len(pending)

    def _lpips(self, images: torch.Tensor, clean: torch.Tensor) -> list:
        if not self.lpips_net:
            return [math.nan] * len(images)
        return metrics.lpips_distance(images, clean, net=self.lpips_net).tolist()

    def _mean_scores(self, x0: torch.Tensor, clean: torch.Tensor) -> dict:
        """The mean of each image's K draws as saved (8 bits), its PSNR / LPIPS, and the fractions of pixels
        whose error |mean − clean| lies within 1, 2, 3 std of the K draws ([0, 1] pixel units), and of
        pixels whose draws all agree (std 0; they count as within only when their error is 0)."""
        estimated = estimate(split_samples(x0, self.config.samples))
        image = as_saved(estimated.mean)
        std = std_from_model(estimated.std).float()
        within = metrics.std_coverage(image, std, clean).tolist()
        return {"image": image, "psnr": metrics.psnr(image, clean).tolist(), "lpips": self._lpips(image, clean),
                **{f"within_{width}std": [row[i] for row in within]
                   for i, width in enumerate(metrics.COVERAGE_WIDTHS)},
                "zero_std": (std.flatten(1) == 0).double().mean(dim=1).tolist()}


def lpips_network(config: EvalConfig, shape: tuple, device) -> str | None:
    """The config's LPIPS network when it can take `shape` images, else None (the report says why)."""
    if not config.lpips:
        return None
    probe = torch.zeros(1, *shape, device=device)
    try:
        metrics.lpips_distance(probe, probe, net=config.lpips)
    except RuntimeError:
        return None
    return config.lpips


def remove_files(root: Path, files) -> None:
    """Remove `files` (inside `root`), then each of their folders left empty, up to `root` (exclusive)."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def model_image_shape(config: EvalConfig, model) -> tuple:
    """(C, H, W) to evaluate at: the config's `image_shape`, else the model's."""
    shape = config.image_shape or getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError("the model has no fixed image size: set image_shape: [C, H, W] in the eval config")
    return tuple(shape)


def run_plan(plan) -> dict:
    """Run a checked `eval_plan.EvalPlan`: remove what --overwrite replaces, write the manifest, compute
    what is missing and report (rank 0's report; {} on the other ranks)."""
    from ipsolve.services import eval_report

    layout, workers = plan.layout, plan.workers
    with folder_lock(layout.root, enabled=workers.is_main):
        if workers.is_main:
            remove_files(layout.root, plan.removals)
            write_json(layout.manifest, plan.manifest)
        workers.barrier()
        evaluator = Evaluator(plan)
        evaluator.run_all()
        workers.barrier()
        if not workers.is_main:
            return {}
        counts = {"computed": evaluator.computed, "reused": evaluator.reused, "replaced": evaluator.replaced}
        return eval_report.write_report(plan.config, layout, list(plan.images), plan.config.model, plan.shape,
                                        workers, counts, plan.lpips_net, failed_images(plan, evaluator.failed))


def failed_images(plan, own: dict) -> dict:
    """index → why, for every image of every process that could not be read: those left without a clean
    image after the barrier; `own` holds this process's reasons, the others' images are read again."""
    return {index: own.get(index) or unreadable(path, plan.shape) for index, path in enumerate(plan.images)
            if not plan.layout.clean(index).is_file()}


def unreadable(path: Path, shape: tuple) -> str:
    """Why the image at `path` cannot be read ("" when it can)."""
    try:
        load_clean(path, shape)
    except (OSError, ValueError) as error:
        return one_line(error)
    return ""


def evaluate(config: EvalConfig, data_dir, out_dir, model=None, model_name: str | None = None,
             limit: int | None = None, device: str | None = None, batch_size: int | None = None,
             overwrite: bool = False, config_file: str | None = None, force: bool = False) -> dict:
    """Evaluate `config` on the images of `data_dir`, writing into `out_dir`; return what rank 0 reported.

    `model` (an ε-model) or `model_name` (for `load_model`, default the config's) picks the model.
    Every input is checked (`eval_plan.plan_evaluation`) before the folder is touched; a folder made
    with other settings is refused unless `overwrite`. In a torchrun job every rank calls this; rank 0
    aggregates after a barrier, the others return {}. `force` runs a batch the memory estimate refuses.
    """
    plan = _planned(config, data_dir, out_dir, model, model_name, limit, device, batch_size, overwrite, config_file,
                    force)
    return run_eval_plan(plan)


def plan_eval(config_name, data_dir, out_dir=None, *, model_name=None, limit=None, device=None, batch_size=None,
              overwrite=False, fid=True, force=False):
    """`ipsolve eval`'s checked plan (`eval_plan.EvalPlan`): the config by name or path (without FID / KID
    unless `fid`), into `out_dir` (default runs/eval-CONFIG). This process joins the torchrun group here;
    `run_eval_plan` leaves it."""
    config = load_eval_config(config_name)
    if not fid:
        config = replace(config, fid_mode=None)
    out = Path(out_dir or f"runs/eval-{Path(config_name).stem}")
    return _planned(config, data_dir, out, None, model_name, limit, device, batch_size, overwrite, str(config_name),
                    force)


def _planned(config, data_dir, out_dir, model, model_name, limit, device, batch_size, overwrite, config_file,
             force=False):
    from ipsolve.services.eval_plan import plan_evaluation

    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    if model_name is not None:
        config = replace(config, model=model_name)
    workers = distributed.start(device)
    try:
        return plan_evaluation(config, data_dir, out_dir, workers, model=model, limit=limit, overwrite=overwrite,
                               config_file=config_file, force=force)
    except BaseException:
        distributed.stop(workers)
        raise


def run_eval_plan(plan) -> dict:
    """Run a checked `plan` (`run_plan`), then leave the torchrun group; rank 0's report, {} elsewhere."""
    try:
        return run_plan(plan)
    finally:
        distributed.stop(plan.workers)


def run_evaluation(config_name, data_dir, out_dir=None, **options):
    """`ipsolve eval` as one call: (the output folder, the report; {} on ranks other than 0). `options` are
    `plan_eval`'s."""
    plan = plan_eval(config_name, data_dir, out_dir, **options)
    return plan.layout.root, run_eval_plan(plan)
