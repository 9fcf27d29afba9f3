"""The tables, plot and metadata of `ipsolve eval`, written by rank 0 from the per-image records on disk.

    per_image.csv   one row per (task, method, estimate, budget, image): NFE, PSNR, LPIPS
    results.csv     one row per (task, method, estimate, budget): means of PSNR / LPIPS, FID and KID of the
                    set, and the anytime consistency (the paper's Appendix B): the mean MSE and LPIPS
                    between the image a user sees at that NFE and the same run's final — for nested
                    methods the preview, for plain solvers the x̂₀ after that many calls of the run with
                    the largest budget (what a user of the plain solver watched before)
    calibration.csv with `samples` K > 1: one row per (task, method, budget): the fraction of pixels whose
                    mean error |mean − clean| lies within 1, 2, 3 std of the K samples, and of pixels of
                    zero std
    table.md        Table-2-style markdown (PSNR, LPIPS, FID, KID against NFE), the log-FID AUC and, with
                    K > 1, the calibration table
    curves.png      PSNR and FID against NFE, one column per task
    results.json    everything above plus versions, seeds, noise units and metric backends
    failed.csv      the images that could not be read, and why (only when some could not; the tables
                    leave them out)

Estimates (the `estimate` column; the paper's tables mix both kinds, these say which is which):
- `sample`: one posterior sample per image, the restorer's output as it is. With K > 1 it is sample 1 of
  the K (drawn in the same batch as the others, so not the very draws of a K = 1 run, but the same kind of
  output): its PSNR, LPIPS and FID compare with a K = 1 run and with the paper's sample-based rows.
- `mean`: the per-pixel mean of the K samples, an estimate of the posterior mean (MMSE): higher PSNR and
  blurrier than any sample. Its PSNR and LPIPS are reported; its FID / KID are not: FID measures how
  much a set of images looks like draws of the data, and a set of averages is by construction no such
  set, so its FID would rank a blur against the paper's samples and mean nothing.

Calibration: a pixel is within c std when |mean − clean| ≤ c · std (mean and clean as saved in 8 bits, the
std of the K samples in [0, 1] pixel units). A Gaussian posterior whose std the K samples estimate well puts
68.3 / 95.4 / 99.7 % of pixels within 1 / 2 / 3 std; fewer means the std is too small (over-confident),
more too large. A pixel of zero std (every sample the same) counts as within only when its error is
exactly zero (the inequality at std 0): a spread of none claims the estimate is exact. The `zero_std`
column gives how many pixels that rule decided.

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

REPORT_FILES = ("per_image.csv", "results.csv", "calibration.csv", "table.md", "curves.png", "results.json",
                "failed.csv")
PER_IMAGE_COLUMNS = ("task", "method", "estimate", "budget", "nfe", "index", "source", "psnr", "lpips")
RESULT_COLUMNS = ("task", "method", "estimate", "budget", "nfe", "images", "psnr", "lpips", "fid", "kid",
                  "to_final_mse", "to_final_lpips")
WITHIN = tuple(f"within_{width}std" for width in metrics.COVERAGE_WIDTHS)
CALIBRATION_COLUMNS = ("task", "method", "budget", "nfe", "images", "samples", *WITHIN, "zero_std")


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


def per_image_rows(config, records: list[dict]) -> list[dict]:
    """per_image.csv: each record as its sample row and, with K > 1, the mean row after it."""
    rows = []
    for record in records:
        rows.append(dict(record, estimate="sample"))
        if config.samples > 1:
            rows.append(dict(record, estimate="mean", psnr=record["mean"]["psnr"], lpips=record["mean"]["lpips"]))
    return rows


def summarise(config, layout, records: list[dict], device) -> list[dict]:
    """One row per (task, method, budget): mean PSNR / LPIPS, and FID / KID against the clean images, of the
    sample; with K > 1 a mean row after it (mean PSNR / LPIPS of the mean estimates, no FID, KID or anytime
    consistency: see the module doc)."""
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
            rows.append({"task": task.name, "method": method.name, "estimate": "sample", "budget": budget,
                         "nfe": group[0]["nfe"], "images": len(group),
                         "psnr": float(np.mean([r["psnr"] for r in group])),
                         "lpips": float(np.mean([r["lpips"] for r in group])), "fid": fid, "kid": kid,
                         "to_final_mse": to_final["mse"], "to_final_lpips": to_final["lpips"]})
            if config.samples > 1:
                rows.append(dict(rows[-1], estimate="mean", fid=math.nan, kid=math.nan, to_final_mse=math.nan,
                                 to_final_lpips=math.nan,
                                 psnr=float(np.mean([r["mean"]["psnr"] for r in group])),
                                 lpips=float(np.mean([r["mean"]["lpips"] for r in group]))))
    return rows


def calibration(config, records: list[dict]) -> list[dict]:
    """With K > 1, one row per (task, method, budget): the mean over images of each image's fraction of pixels
    within 1, 2, 3 std, and of pixels of zero std (every image has as many pixels: the pooled fractions)."""
    rows = []
    for task, method, budget in itertools.product(config.tasks, config.methods, config.budgets):
        group = [r for r in records if (r["task"], r["method"], r["budget"]) == (task.name, method.name, budget)]
        rows.append({"task": task.name, "method": method.name, "budget": budget, "nfe": group[0]["nfe"],
                     "images": len(group), "samples": config.samples,
                     **{key: float(np.mean([r["mean"][key] for r in group])) for key in (*WITHIN, "zero_std")}})
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
    rows = [row for row in rows if row.get("estimate", "sample") == "sample"]  # mean rows have no FID
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


def estimate_label(config, estimate: str) -> str:
    """How table.md names a row's kind: the sample (1 of K) or the mean of the K samples."""
    if estimate == "mean":
        return f"mean of {config.samples}"
    return "sample" if config.samples == 1 else f"sample 1 of {config.samples}"


def markdown_table(rows: list[dict], aucs: dict, config, model_name: str, lpips_note: str = "",
                   calibrated: list[dict] = ()) -> str:
    """Table-2-style markdown: for each metric, tasks × methods × estimates against the NFE budgets (FID, KID
    and the anytime consistency of the samples only); with K > 1 the calibration table."""
    budgets = sorted({r["budget"] for r in rows})
    header = "| task | method | estimate | " + " | ".join(f"{b} NFE" for b in budgets) + " |"
    rule = "|---|---|---|" + "---|" * len(budgets)
    lines = [f"# Evaluation of {model_name}", ""]

    def table(estimates, cell):
        for task in config.tasks:
            for method in config.methods:
                for estimate in estimates:
                    cells = {r["budget"]: r for r in rows
                             if (r["task"], r["method"], r["estimate"]) == (task.name, method.name, estimate)}
                    if cells:
                        lines.append(f"| {task.name} | {method.name} | {estimate_label(config, estimate)} | "
                                     + " | ".join(cell(cells[b], b) for b in budgets) + " |")

    both = ("sample", "mean")
    for key, title, digits, estimates in (("psnr", "PSNR (dB, higher is better)", 2, both),
                                          ("lpips", "LPIPS (lower is better)", 4, both),
                                          ("fid", "FID (lower is better)", 2, ("sample",)),
                                          ("kid", "KID (lower is better)", 4, ("sample",))):
        lines += [f"## {title}", "", header, rule]
        table(estimates, lambda row, budget: _cell(row[key], digits, row["nfe"], budget))
        lines.append("")
    lines += ["## Anytime consistency: MSE from the image shown at each NFE to the run's final (lower is steadier)",
              "", header, rule]
    table(("sample",), lambda row, budget: _cell(row["to_final_mse"], 5) + f" / {_cell(row['to_final_lpips'], 4)}")
    lines += ["", "(each cell: MSE on [0, 1] images / LPIPS; plain solvers: the x̂₀ of their largest-budget run)", ""]
    lines += ["## log-FID AUC (area under ln FID of the samples against NFE, trapezoid rule; lower is better)", "",
              "| task | " + " | ".join(m.name for m in config.methods) + " |",
              "|---|" + "---|" * len(config.methods)]
    for task in config.tasks:
        lines.append(f"| {task.name} | " + " | ".join(_cell(aucs[task.name][m.name], 1) for m in config.methods) + " |")
    if calibrated:
        exact = metrics.exact_coverage(config.samples)
        lines += ["", f"## Calibration of the std of {config.samples} samples: % of pixels whose |mean − clean| "
                  "lies within 1 / 2 / 3 std (a Gaussian posterior: 68.3 / 95.4 / 99.7 as K grows)", "",
                  "| task | method | NFE | within 1 std | within 2 std | within 3 std | std 0 |",
                  "|---|---|---|---|---|---|---|",
                  f"| exact Gaussian posterior, K = {config.samples} | | | "
                  + " | ".join(f"{100 * value:.1f}" for value in exact) + " | |"]
        for row in calibrated:
            lines.append(f"| {row['task']} | {row['method']} | {row['nfe']} | "
                         + " | ".join(f"{100 * row[key]:.1f}" for key in (*WITHIN, "zero_std")) + " |")
    lines += ["", "Notes: PSNR per image on [0, 1] of the 8-bit outputs as saved, then the mean over images. "
              "FID and KID compare the saved outputs with the clean images (clean-fid, "
              f"mode {config.fid_mode}). A cell marked * made a different number of network calls than its "
              "budget (vanilla DDRM's grid makes 31 calls for 30). Noise: "
              + ", ".join(f"{t.name} sigma_y = {t.sigma_y_pixel} pixel = {t.sigma_y_model} model units"
                          for t in config.tasks) + "." + lpips_note, "", estimates_note(config), ""]
    return "\n".join(lines)


def estimates_note(config) -> str:
    """What the estimate column of table.md means (the paper's tables mix both kinds without saying)."""
    if config.samples == 1:
        return ("Estimate: every row is a posterior sample, one restorer output per image (`samples: K` in the "
                "config adds the mean of K samples and the std's calibration).")
    k = config.samples
    return (f"Estimates: `sample 1 of {k}` rows are posterior samples, the first of the {k} drawn per image in "
            f"one batch: the same kind of output as a run with one sample (though not the same draws), so "
            f"comparable with it and with sample-based published rows. `mean of {k}` rows are posterior mean "
            f"estimates, the per-pixel mean of the {k} samples (saved in 8 bits, as `ipsolve restore --estimate "
            f"mean` saves mean.png): higher PSNR, blurrier. They have no FID / KID: FID asks whether a set of "
            f"images looks like draws of the data, which a set of averages is not by construction, so a mean's "
            f"FID is comparable neither with the samples' nor with the paper's FID. Calibration: a pixel is "
            f"within c std when |mean − clean| ≤ c·std (8-bit mean and clean, std of the {k} samples in [0, 1] "
            f"pixel units); a pixel of std 0 (all samples equal) counts as within only when its error is 0, and "
            f"the last column gives the share of such pixels. The first row is what exact draws of a Gaussian "
            f"posterior give at this K (Student's t with {k - 1} degrees of freedom: the std of {k} samples is "
            f"itself uncertain, and the mean's error holds 1/{k} of a sample's variance besides the posterior's)."
            f" Fewer pixels within than that: the std is too small (over-confident); more: too large.")


def _cell(value: float, digits: int, nfe: int | None = None, budget: int | None = None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}" + ("*" if nfe is not None and nfe != budget else "")


def plot_curves(path: Path, rows: list[dict], config) -> None:
    """PSNR (and FID when computed) against NFE, one column per task, one line per method (its samples; with
    K > 1 a dashed line of its mean estimates in the PSNR row)."""
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
                for estimate in ("sample", "mean") if key == "psnr" else ("sample",):
                    points = sorted((r["nfe"], r[key]) for r in rows
                                    if (r["task"], r["method"], r["estimate"]) == (task.name, method.name, estimate))
                    if points:
                        axis.plot(*zip(*points), marker="o", linestyle="-" if estimate == "sample" else "--",
                                  label=method.name if estimate == "sample" else f"{method.name} (mean)")
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
        "samples": {"K": config.samples, "estimates": estimates_note(config),
                    "exact_gaussian_coverage": metrics.exact_coverage(config.samples) if config.samples > 1 else None},
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
    calibrated = calibration(config, records) if config.samples > 1 else []
    write_csv(layout.root / "per_image.csv", per_image_rows(config, records), PER_IMAGE_COLUMNS)
    write_csv(layout.root / "results.csv", rows, RESULT_COLUMNS)
    if calibrated:
        write_csv(layout.root / "calibration.csv", calibrated, CALIBRATION_COLUMNS)
    with atomic_path(layout.root / "table.md") as tmp:
        Path(tmp).write_text(markdown_table(rows, aucs, config, model_name,
                                            lpips_skipped_note(config, lpips_net, shape), calibrated))
    plot_curves(layout.root / "curves.png", rows, config)
    report = dict(metadata(config, images, model_name, shape, workers, lpips_net), results=rows,
                  calibration=calibrated, log_fid_auc=aucs, images=len(images) - len(failed), **counts,
                  **failures)
    with atomic_path(layout.root / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1, default=str, allow_nan=True))
    return report
