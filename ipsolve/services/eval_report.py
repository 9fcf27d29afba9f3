"""The tables, plot and metadata of `ipsolve eval`, written by rank 0 from the per-image records on disk.

    per_image.csv   one row per (task, method, budget, image): NFE, PSNR, LPIPS
    results.csv     one row per (task, method, budget): means of PSNR / LPIPS, FID and KID of the set, and
                    the anytime consistency (the paper's Appendix B): the mean MSE and LPIPS between the
                    image a user sees at that NFE and the same run's final — for nested methods the
                    preview, for plain solvers the x̂₀ after that many calls of the run with the largest
                    budget (what a user of the plain solver watched before)
    table.md        Table-2-style markdown (PSNR, LPIPS, FID, KID against NFE) and the log-FID AUC
    curves.png      PSNR and FID against NFE, one column per task
    results.json    everything above plus versions, seeds, noise units and metric backends
    failed.csv      the images that could not be read, and why (only when some could not; the tables
                    leave them out)

log-FID AUC (the paper's Table 1 measure of anytime quality, lower is better): the area under the curve of
ln(FID) against the number of network evaluations, by the trapezoid rule over the evaluated budgets
(from the smallest to the largest), NFE being the exact count of calls (vanilla DDRM at 30 makes 31).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

import ipsolve
from ipsolve import metrics
from ipsolve.imageio import atomic_path
from ipsolve.services.progress import CountProgress

REPORT_FILES = ("per_image.csv", "results.csv", "table.md", "curves.png", "results.json", "failed.csv")
PER_IMAGE_COLUMNS = ("task", "method", "budget", "nfe", "index", "source", "psnr", "lpips")
RESULT_COLUMNS = ("task", "method", "budget", "nfe", "images", "psnr", "lpips", "fid", "kid", "to_final_mse",
                  "to_final_lpips")


def read_records(config, layout, count: int, failed=()) -> list[dict]:
    """Every per-image record of the `count` images but the `failed` indices, in (task, method, budget,
    index) order; ValueError if one is missing."""
    records = []
    for task in config.tasks:
        for method in config.methods:
            for budget in config.budgets:
                for index in (i for i in range(count) if i not in failed):
                    path = layout.record(task.name, method.name, budget, index)
                    if not path.is_file():
                        raise ValueError(f"{path} is missing: rerun the evaluation to compute it")
                    records.append(json.loads(path.read_text()))
    return records


def summarise(config, layout, records: list[dict], device) -> list[dict]:
    """One row per (task, method, budget): mean PSNR / LPIPS, and FID / KID against the clean images."""
    indices = sorted({r["index"] for r in records})
    fid_enabled = config.fid_mode is not None and len(indices) >= 2
    if fid_enabled:
        extractor = metrics.InceptionFeatures(device=device)
        reference = metrics.image_features([layout.clean(i) for i in indices], extractor,
                                           mode=config.fid_mode, device=device)
    rows = []
    groups = list(itertools.product(config.tasks, config.methods, config.budgets))
    with CountProgress(len(groups), "FID / KID", unit="set", enabled=fid_enabled) as progress:
        for task, method, budget in groups:
            group = [r for r in records if (r["task"], r["method"], r["budget"]) == (task.name, method.name, budget)]
            fid = kid = math.nan
            if fid_enabled:
                files = [layout.output(task.name, method.name, budget, i) for i in indices]
                features = metrics.image_features(files, extractor, mode=config.fid_mode, device=device)
                fid = metrics.fid_from_features(features, reference)
                kid = metrics.kid_from_features(features, reference)
                progress.update()
            to_final = consistency(records, task.name, method, budget, config.budgets[-1])
            rows.append({"task": task.name, "method": method.name, "budget": budget,
                         "nfe": group[0]["nfe"], "images": len(group),
                         "psnr": float(np.mean([r["psnr"] for r in group])),
                         "lpips": float(np.mean([r["lpips"] for r in group])), "fid": fid, "kid": kid,
                         "to_final_mse": to_final["mse"], "to_final_lpips": to_final["lpips"]})
    return rows


def consistency(records: list[dict], task: str, method, budget: int, largest: int) -> dict:
    """Mean MSE / LPIPS from what a user sees at `budget` to the run's final (see the module doc)."""
    if method.nested:
        values = [r["to_final"] for r in records if (r["task"], r["method"], r["budget"]) == (task, method.name, budget)]
    elif budget == largest:
        return {"mse": 0.0, "lpips": 0.0}
    else:
        values = [r["x0_to_final"][str(budget)] for r in records
                  if (r["task"], r["method"], r["budget"]) == (task, method.name, largest)]
    return {key: float(np.mean([v[key] for v in values])) for key in ("mse", "lpips")}


def log_fid_aucs(rows: list[dict]) -> dict:
    """{task: {method: AUC}} of ln(FID) against NFE (NaN when FID is off or under two budgets)."""
    aucs = {}
    for row in rows:
        aucs.setdefault(row["task"], {}).setdefault(row["method"], [])
    for task, methods in aucs.items():
        for method in methods:
            points = [(r["nfe"], r["fid"]) for r in rows if (r["task"], r["method"]) == (task, method)
                      and not math.isnan(r["fid"])]
            methods[method] = metrics.log_fid_auc(*zip(*points)) if points else math.nan
    return aucs


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict], aucs: dict, config, model_name: str, lpips_note: str = "") -> str:
    """Table-2-style markdown: for each metric, tasks × methods against the NFE budgets."""
    budgets = sorted({r["budget"] for r in rows})
    header = "| task | method | " + " | ".join(f"{b} NFE" for b in budgets) + " |"
    rule = "|---|---|" + "---|" * len(budgets)
    lines = [f"# Evaluation of {model_name}", ""]
    for key, title, digits in (("psnr", "PSNR (dB, higher is better)", 2), ("lpips", "LPIPS (lower is better)", 4),
                               ("fid", "FID (lower is better)", 2), ("kid", "KID (lower is better)", 4)):
        lines += [f"## {title}", "", header, rule]
        for task in config.tasks:
            for method in config.methods:
                cells = {r["budget"]: r for r in rows if (r["task"], r["method"]) == (task.name, method.name)}
                values = [_cell(cells[b][key], digits, cells[b]["nfe"], b) for b in budgets]
                lines.append(f"| {task.name} | {method.name} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## Anytime consistency: MSE from the image shown at each NFE to the run's final (lower is steadier)",
              "", header, rule]
    for task in config.tasks:
        for method in config.methods:
            cells = {r["budget"]: r for r in rows if (r["task"], r["method"]) == (task.name, method.name)}
            values = [_cell(cells[b]["to_final_mse"], 5) + f" / {_cell(cells[b]['to_final_lpips'], 4)}"
                      for b in budgets]
            lines.append(f"| {task.name} | {method.name} | " + " | ".join(values) + " |")
    lines += ["", "(each cell: MSE on [0, 1] images / LPIPS; plain solvers: the x̂₀ of their largest-budget run)", ""]
    lines += ["## log-FID AUC (area under ln FID against NFE, trapezoid rule; lower is better)", "",
              "| task | " + " | ".join(m.name for m in config.methods) + " |",
              "|---|" + "---|" * len(config.methods)]
    for task in config.tasks:
        lines.append(f"| {task.name} | " + " | ".join(_cell(aucs[task.name][m.name], 1) for m in config.methods) + " |")
    lines += ["", "Notes: PSNR per image on [0, 1] of the 8-bit outputs as saved, then the mean over images. "
              "FID and KID compare the saved outputs with the clean images (clean-fid, "
              f"mode {config.fid_mode}). A cell marked * made a different number of network calls than its "
              "budget (vanilla DDRM's grid makes 31 calls for 30). Noise: "
              + ", ".join(f"{t.name} sigma_y = {t.sigma_y_pixel} pixel = {t.sigma_y_model} model units"
                          for t in config.tasks) + "." + lpips_note, ""]
    return "\n".join(lines)


def _cell(value: float, digits: int, nfe: int | None = None, budget: int | None = None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}" + ("*" if nfe is not None and nfe != budget else "")


def plot_curves(path: Path, rows: list[dict], config) -> None:
    """PSNR (and FID when computed) against NFE, one column per task, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [("psnr", "PSNR (dB)")] + ([("fid", "FID")] if config.fid_mode is not None else []) + [
        ("to_final_mse", "MSE to the run's final")]
    figure, axes = plt.subplots(len(keys), len(config.tasks), squeeze=False,
                                figsize=(3.2 * len(config.tasks), 2.8 * len(keys)))
    for column, task in enumerate(config.tasks):
        for line, (key, label) in enumerate(keys):
            axis = axes[line][column]
            for method in config.methods:
                points = sorted((r["nfe"], r[key]) for r in rows if (r["task"], r["method"]) == (task.name, method.name))
                axis.plot(*zip(*points), marker="o", label=method.name)
            axis.set_title(task.name if line == 0 else "")
            axis.set_xlabel("NFE")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def git_sha() -> str | None:
    """The commit of the ipsolve checkout, if it is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(ipsolve.__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def lpips_skipped_note(config, lpips_net: str | None, shape: tuple) -> str:
    """Why LPIPS is missing although the config asks for it ("" when it is not)."""
    if not config.lpips or lpips_net:
        return ""
    return (f" LPIPS ({config.lpips}) was skipped: its network cannot take {shape[1]}x{shape[2]} images "
            f"(too small for its pooling layers).")


def metadata(config, images: list[Path], model_name: str, shape: tuple, workers, lpips_net: str | None) -> dict:
    """Versions, data, seeds, noise units and metric backends of an evaluation."""
    fid = None if config.fid_mode is None else dict(metrics.fid_backend(config.fid_mode),
                                                    reference="the clean images (clean/)")
    if lpips_net:
        lpips = {"library": "lpips 0.1 (v0.1 linear layers)", "net": lpips_net,
                 "weights": str(metrics.lpips_weights_path(lpips_net)), "input": "[0, 1] clamped, gray repeated to RGB"}
    else:
        lpips = lpips_skipped_note(config, lpips_net, shape).strip() or None
    return {
        "versions": {"ipsolve": ipsolve.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version(), "git_sha": git_sha()},
        "config": config.as_dict(),
        "model": {"name": model_name, "image_shape": list(shape)},
        "data": {"images": [p.name for p in images], "folder": str(images[0].parent.resolve()),
                 "preprocessing": "scale to cover the image size (bicubic, antialiased), center crop, 8-bit"},
        "seeds": {"seed": config.seed, "per_image": "torch.Generator().manual_seed(seed * 1_000_003 + index): "
                  "measurement noise first, then every solver draw"},
        "noise_units": {t.name: {"sigma_y_pixel": t.sigma_y_pixel, "sigma_y_model": t.sigma_y_model}
                        for t in config.tasks},
        "metrics": {"psnr": "per image on [0, 1], the 8-bit outputs and clean images as saved; mean over images",
                    "lpips": lpips, "fid": fid, "kid": fid and "clean-fid kernel_distance (polynomial kernel)",
                    "log_fid_auc": "trapezoid area under ln(FID) against exact NFE over the evaluated budgets"},
        "processes": workers.world_size,
        "device": str(workers.device),
    }


def write_failed(path: Path, images: list[Path], failed: dict) -> None:
    """failed.csv: each image that could not be read, and why; no file when none failed."""
    if not failed:
        path.unlink(missing_ok=True)
        return
    write_csv(path, [{"index": i, "source": images[i].name, "reason": why} for i, why in sorted(failed.items())],
              ("index", "source", "reason"))


def write_report(config, layout, images: list[Path], model_name: str, shape: tuple, workers, counts: dict,
                 lpips_net: str | None, failed: dict) -> dict:
    """Aggregate the per-image records of all ranks into the files listed in the module docstring, leaving
    out the `failed` images (index → why: failed.csv); `counts` (computed, reused, replaced) says how
    much of this run was new. With no image left, only failed.csv is written."""
    write_failed(layout.root / "failed.csv", images, failed)
    failures = {"failed": [{"index": i, "source": images[i].name, "reason": why} for i, why in sorted(failed.items())]}
    if len(failed) == len(images):
        return dict(images=0, **counts, **failures)
    records = read_records(config, layout, len(images), failed)
    for record in records:
        record["source"] = images[record["index"]].name
    rows = summarise(config, layout, records, workers.device)
    aucs = log_fid_aucs(rows)
    write_csv(layout.root / "per_image.csv", records, PER_IMAGE_COLUMNS)
    write_csv(layout.root / "results.csv", rows, RESULT_COLUMNS)
    with atomic_path(layout.root / "table.md") as tmp:
        Path(tmp).write_text(markdown_table(rows, aucs, config, model_name,
                                            lpips_skipped_note(config, lpips_net, shape)))
    plot_curves(layout.root / "curves.png", rows, config)
    report = dict(metadata(config, images, model_name, shape, workers, lpips_net), results=rows,
                  log_fid_auc=aucs, images=len(images) - len(failed), **counts, **failures)
    with atomic_path(layout.root / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1, default=str, allow_nan=True))
    return report
