"""`ipsolve eval`: vanilla DDRM and Nested DDRM over a folder of images, at every NFE budget of a config.

Data: the png / jpg / jpeg files of a folder sorted by name (`--limit N`: the first N), each scaled with
antialiased bicubic interpolation so it covers the model's image size, then center-cropped to it (gray
for 1-channel models, RGB for 3-channel ones). Dataset index i is the position in that sorted list.

Randomness: image i draws everything — its measurement noise, then the solver's draws — from its own
generator seeded `seed * 1_000_003 + i`, so a result does not depend on the batch or on how the indices
are sharded over processes (`torchrun --nproc-per-node K -m ipsolve eval …`: rank r takes i = r, r+K, …).

Outputs in OUT (each file written atomically; a rerun skips every run whose outputs all exist):
    clean/00000.png                         the dataset image as evaluated (the FID reference set)
    TASK/METHOD/nfe010/00000.png, .json     the output after 10 NFEs and its record (PSNR, LPIPS, NFE)
    per_image.csv, results.csv, table.md, curves.png, results.json   (written by rank 0, see eval_report)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import degradations
import solvers
from ipsolve import distributed, metrics
from ipsolve.config import EvalConfig, MethodConfig, TaskConfig, load_eval_config
from ipsolve.imageio import atomic_path, from_model, load_image, save_image, to_model

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
    """Vanilla DDRM: one run per budget. Nested: one run per distinct split, read at its budgets."""
    runs = []
    for task in config.tasks:
        for method in config.methods:
            if method.name == "ddrm":
                runs += [Run(task, method, (budget,)) for budget in config.budgets]
                continue
            by_split = {}
            for budget in config.budgets:
                by_split.setdefault(method.splits[budget], []).append(budget)
            runs += [Run(task, method, tuple(budgets)) for budgets in by_split.values()]
    return runs


class OutputLayout:
    """Paths inside the output folder."""

    def __init__(self, root):
        self.root = Path(root)

    def clean(self, index: int) -> Path:
        return self.root / "clean" / f"{index:05d}.png"

    def folder(self, task: str, method: str, budget: int) -> Path:
        return self.root / task / method / f"nfe{budget:03d}"

    def output(self, task: str, method: str, budget: int, index: int) -> Path:
        return self.folder(task, method, budget) / f"{index:05d}.png"

    def record(self, task: str, method: str, budget: int, index: int) -> Path:
        return self.output(task, method, budget, index).with_suffix(".json")

    def done(self, run: Run, index: int) -> bool:
        return all(self.record(run.task.name, run.method.name, b, index).is_file()
                   and self.output(run.task.name, run.method.name, b, index).is_file() for b in run.budgets)


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


def per_image_noise(generators: list[torch.Generator]):
    """noise(shape) for a batch: row b is drawn from generators[b] (CPU, float32)."""
    def noise(shape):
        if shape[0] != len(generators):
            raise ValueError(f"noise asked for a batch of {shape[0]}, the batch has {len(generators)} images")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
    return noise


def solve(model, run: Run, clean: torch.Tensor, op, generators) -> dict:
    """Measure `clean` ([0, 1] images) with `op` and run the solver: {budget: (x0 in model space, NFE)}."""
    noise = per_image_noise(generators)
    sigma_y = run.task.sigma_y_model
    y = op.H(to_model(clean))
    y = y + sigma_y * noise(tuple(y.shape)).to(y)
    method = run.method
    if method.name == "ddrm":
        (budget,) = run.budgets
        steps = solvers.ddrm_timesteps(budget, len(model.alphas_cumprod))
        x0 = solvers.ddrm(model, y, op, sigma_y, steps, eta=method.eta, eta_b=method.eta_b, noise=noise)
        return {budget: (x0, len(steps))}
    outer, inner = run.split
    results = {}
    previews = solvers.nested(model, inner="ddrm", outer_steps=outer, inner_steps=inner,
                              eta_outer=method.eta_outer, noise=noise, y=y, op=op, sigma_y=sigma_y,
                              eta=method.eta, eta_b=method.eta_b)
    for preview in previews:
        if preview.nfe in run.budgets:
            results[preview.nfe] = (preview.x0, preview.nfe)
        if len(results) == len(run.budgets):
            break
    return results


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))


class Evaluator:
    """Computes and stores every (run, image) pair of this process's shard that is not on disk yet."""

    def __init__(self, config: EvalConfig, model, images: list[Path], layout: OutputLayout,
                 workers: distributed.Workers, shape: tuple):
        self.config, self.model, self.images, self.layout = config, model, images, layout
        self.workers, self.shape = workers, shape
        self.computed = self.skipped = 0

    def run_all(self) -> None:
        indices = list(self.workers.shard(len(self.images)))
        for index in indices:
            self._save_clean(index)
        runs = plan_runs(self.config)
        todo = [(run, [i for i in indices if not self.layout.done(run, i)]) for run in runs]
        self.skipped = sum(len(indices) - len(pending) for _, pending in todo)
        total = sum(len(pending) for _, pending in todo)
        with tqdm(total=total, desc="eval", unit="image", disable=not self.workers.is_main) as bar:
            for run, pending in todo:
                op = self._operator(run.task)
                for start in range(0, len(pending), self.config.batch_size):
                    batch = pending[start:start + self.config.batch_size]
                    self._run_batch(run, op, batch)
                    bar.update(len(batch))

    def _operator(self, task: TaskConfig):
        channels, height, width = self.shape
        op = degradations.make(task.operator, channels=channels, image_size=(height, width), seed=task.seed,
                               **task.params)
        if tuple(op.input_shape) != tuple(self.shape):
            raise ValueError(f"task {task.name!r} takes {tuple(op.input_shape)} images, the model "
                             f"{tuple(self.shape)}")
        return op

    def _save_clean(self, index: int) -> None:
        path = self.layout.clean(index)
        if not path.is_file():
            save_image(load_clean(self.images[index], self.shape), path)

    def _run_batch(self, run: Run, op, indices: list[int]) -> None:
        device = self.workers.device
        clean = torch.stack([load_clean(self.images[i], self.shape) for i in indices]).to(device)
        generators = [distributed.image_generator(self.config.seed, i) for i in indices]
        with torch.no_grad():
            results = solve(self.model, run, clean, op, generators)
        for budget, (x0, nfe) in results.items():
            restored = from_model(x0).clamp(0, 1)
            psnrs = metrics.psnr(restored, clean).tolist()
            lpipses = (metrics.lpips_distance(restored, clean, net=self.config.lpips).tolist()
                       if self.config.lpips else [math.nan] * len(indices))
            for row, index in enumerate(indices):
                names = (run.task.name, run.method.name, budget, index)
                save_image(restored[row], self.layout.output(*names))
                write_json(self.layout.record(*names), {
                    "index": index, "source": self.images[index].name, "task": run.task.name,
                    "method": run.method.name, "budget": budget, "nfe": nfe, "split": run.split,
                    "seed": distributed.image_seed(self.config.seed, index),
                    "psnr": psnrs[row], "lpips": lpipses[row]})
        self.computed += len(indices)


def model_image_shape(config: EvalConfig, model) -> tuple:
    """(C, H, W) to evaluate at: the config's `image_shape`, else the model's."""
    shape = config.image_shape or getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError("the model has no fixed image size: set image_shape: [C, H, W] in the eval config")
    return tuple(shape)


def evaluate(config: EvalConfig, data_dir, out_dir, model=None, model_name: str | None = None,
             limit: int | None = None, device: str | None = None, batch_size: int | None = None) -> dict:
    """Evaluate `config` on the images of `data_dir`, writing into `out_dir`; return what rank 0 reported.

    `model` (an ε-model) or `model_name` (for `load_model`, default the config's) picks the model.
    In a torchrun job every rank calls this; rank 0 aggregates after a barrier, the others return {}.
    """
    from ipsolve import eval_report
    from ipsolve.models import load_model

    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    images = list_images(data_dir, limit)
    workers = distributed.start(device)
    try:
        name = model_name or config.model
        model = model if model is not None else load_model(name, device=workers.device)
        shape = model_image_shape(config, model)
        layout = OutputLayout(out_dir)
        evaluator = Evaluator(config, model, images, layout, workers, shape)
        evaluator.run_all()
        workers.barrier()
        if not workers.is_main:
            return {}
        return eval_report.write_report(config, layout, images, name, shape, workers,
                                        computed=evaluator.computed, skipped=evaluator.skipped)
    finally:
        distributed.stop(workers)


# ------------------------------------------------------------------------------------------ command line
def add_eval_arguments(parser) -> None:
    """Arguments of `ipsolve eval`."""
    parser.add_argument("--config", required=True,
                        help="a packaged eval config (celeba_table2, embedded_table2, embedded_smoke) or a YAML path")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of png/jpg images, sorted by name, fitted to the model's size")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default runs/eval-CONFIG); rerunning skips finished images")
    parser.add_argument("--model", help="model name or path, overriding the config's `model`")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, per rank)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per solver batch (config's default)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID / KID (PSNR and LPIPS only)")


def run_eval_command(args) -> int:
    """`ipsolve eval`: run, then print where the tables are (rank 0)."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = load_eval_config(args.config)
    if args.no_fid:
        config = replace(config, fid_mode=None)
    out = Path(args.out or f"runs/eval-{Path(args.config).stem}")
    report = evaluate(config, args.data, out, model_name=args.model, limit=args.limit, device=args.device,
                      batch_size=args.batch_size)
    if report:
        print(f"{out / 'table.md'}: {report['images']} images, {report['computed']} computed, "
              f"{report['skipped']} reused")
    return 0
