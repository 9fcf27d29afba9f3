"""The output folder of one `ipsolve restore` run.

Each preview is written the moment it exists (`preview_{step:02d}_nfe{nfe:03d}.png`), then the final
image (`final.png`, the last preview), the anytime strip (`strip.png`: the measurement, then the
previews labelled with their NFE and, when the clean image is known, PSNR; one row per sample), its
animation (`anytime.gif`, one preview a frame) and the run record (`run.json`). With estimate="mean"
(`ipsolve restore --samples K --estimate mean`) every preview also writes the posterior mean of its K
samples (`preview_{step:02d}_nfe{nfe:03d}_mean.png`) and their per-pixel std, colour-mapped with a scale bar
in [0, 1] pixel units (`…_std.png`, `figures.std_picture`), and the run ends with `mean.png` and `std.png`
(the last preview's). Every file is written
atomically, so a user can watch the folder while the run goes on.

One run at a time: `start` locks the folder (a second run into it fails at once with one line), removes
the files an earlier run's run.json says it wrote (`written_files`; nothing else) and writes run.json with
`"status": "running"`; every preview rewrites it, so after any failure (a full disk, a crash) run.json
still says how far the run got: a preview whose record cannot be written is removed again, so run.json
always names the last preview on disk.
"""
from __future__ import annotations

import contextlib
import json
from fnmatch import fnmatch
from pathlib import Path

import torch

from ipsolve.figures import anytime_frames, anytime_strip, std_picture
from ipsolve.services.folder_lock import folder_lock
from ipsolve.imageio import atomic_path, from_model, save_gif, save_image, save_picture, std_from_model
from ipsolve.metrics import psnr

OUTPUT_PATTERNS = ("preview_*_nfe*.png", "final.png", "strip.png", "anytime.gif", "run.json", "mean.png", "std.png")
FINISHED_FILES = ("final.png", "strip.png", "anytime.gif")  # written by `finish` when there are previews
ESTIMATE_FILES = ("mean.png", "std.png")  # written by `finish` as well with estimate "mean"


def stored_record(folder) -> dict:
    """The run.json of `folder` ({} when missing, unreadable or not a record)."""
    try:
        record = json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def written_files(record: dict) -> list[str]:
    """The names of the files the run of `record` (a run.json) says it wrote in its folder."""
    previews = [p.get(key) for p in record.get("previews", []) if isinstance(p, dict)
                for key in ("file", "mean_file", "std_file")]
    previews = [name for name in previews
                if isinstance(name, str) and fnmatch(name, OUTPUT_PATTERNS[0]) and "/" not in name]
    finished = list(FINISHED_FILES) if previews and record.get("status") in ("done", "interrupted") else []
    if finished and record.get("estimate") == "mean":
        finished += ESTIMATE_FILES
    return [*previews, *finished, "run.json"] if record else []


class RunFolder:
    """Writes one run's outputs into `path` and keeps the previews for the strip and the GIF."""

    def __init__(self, path, *, measurement=None, clean=None, estimate: str = "sample"):
        """`measurement` (C, H, W) in [0, 1] at the image's size heads the strip; `clean` (C, H, W) in [0, 1],
        when known, labels every preview with its PSNR; estimate "mean": previews carry a posterior estimate
        (`Preview.estimate`), written as mean and std pictures beside the samples."""
        self.path = Path(path)
        self.estimate = estimate
        self.estimates: list[tuple] = []  # with estimate "mean": (mean picture, std picture) per preview
        self.measurement, self.clean = measurement, clean
        self.frames: list[torch.Tensor] = []  # previews in [0, 1], each (B, C, H, W) on the CPU
        self.previews: list[dict] = []
        self.record: dict = {}
        self._lock = contextlib.ExitStack()

    def start(self, record: dict) -> None:
        """Lock the folder (ValueError if another run holds it), remove the files an earlier run recorded
        it wrote and write run.json = `record` with status "running"."""
        self._lock.enter_context(folder_lock(self.path))
        remove_written(self.path)
        self.update(**{**record, "status": "running"})

    def update(self, **fields) -> None:
        """Rewrite run.json with `fields` changed (how far the run got, an error)."""
        record = {**self.record, **fields}
        self._write_record(record)
        self.record = record  # only once it is on disk

    def close(self) -> None:
        """Release the folder (also after an error)."""
        self._lock.close()

    def add_preview(self, preview, elapsed_s: float) -> Path:
        """Write one preview (a grid when it holds several samples) and remember it."""
        image = from_model(preview.x0).detach().to("cpu", torch.float32).clamp(0, 1)
        path = self.path / f"preview_{preview.step:02d}_nfe{preview.nfe:03d}.png"
        save_image(image[0] if len(image) == 1 else image, path)
        entry = {"step": preview.step, "nfe": preview.nfe, "file": path.name, "elapsed_s": round(elapsed_s, 3)}
        written = [path]
        if self.estimate == "mean":
            pictures = estimate_pictures(preview, f"NFE {preview.nfe}")
            written += list(estimate_files(path))
            try:
                save_image(pictures[0], written[1])
                save_picture(pictures[1], written[2])
            except OSError:
                for done in written:
                    done.unlink(missing_ok=True)
                raise
            entry.update(mean_file=written[1].name, std_file=written[2].name)
        self.previews.append(entry)
        try:
            self.update(nfe=preview.nfe, elapsed_s=round(elapsed_s, 3))
        except OSError:  # run.json cannot say it (a full disk): the preview goes, so the two agree
            self.previews.pop()
            for done in written:
                done.unlink(missing_ok=True)
            raise
        if self.estimate == "mean":
            self.estimates.append(pictures)
        self.frames.append(image)
        return path

    def finish(self, record: dict) -> None:
        """Write final.png (the last preview), strip.png, anytime.gif and run.json (`record` + previews,
        status "interrupted" or "done"), then release the folder."""
        if self.frames:
            final = self.frames[-1]
            save_image(final[0] if len(final) == 1 else final, self.path / "final.png")
            nfes = [preview["nfe"] for preview in self.previews]
            psnrs = None if self.clean is None else [psnr(frame, self.clean.expand_as(frame)).tolist()
                                                     for frame in self.frames]
            save_picture(anytime_strip(self.measurement, self.frames, nfes, psnrs), self.path / "strip.png")
            save_gif(anytime_frames(self.measurement, self.frames, nfes, psnrs), self.path / "anytime.gif")
        if self.estimates:
            save_image(self.estimates[-1][0], self.path / "mean.png")
            save_picture(self.estimates[-1][1], self.path / "std.png")
        self.update(**{**record, "status": "interrupted" if record.get("interrupted") else "done"})
        self.close()

    def _write_record(self, record: dict) -> None:
        with atomic_path(self.path / "run.json") as tmp:
            Path(tmp).write_text(json.dumps({**record, "previews": self.previews}, indent=2) + "\n")


def estimate_files(preview_path) -> tuple[Path, Path]:
    """(mean, std) files written beside the preview file `preview_path` with estimate "mean"."""
    stem = Path(preview_path).with_suffix("")
    return Path(f"{stem}_mean.png"), Path(f"{stem}_std.png")


def estimate_pictures(preview, title=None) -> tuple:
    """(mean, std picture) of a preview's posterior estimate: the mean in [0, 1] (C, H, W; a grid for
    several measurements) and `figures.std_picture` of the first measurement's std in [0, 1] pixel units."""
    if preview.estimate is None:
        raise ValueError("estimate mean needs previews with a posterior estimate (samples of 2 or more)")
    mean = from_model(preview.estimate.mean).detach().to("cpu", torch.float32).clamp(0, 1)
    std = std_from_model(preview.estimate.std.detach().to("cpu", torch.float32))
    return mean[0] if len(mean) == 1 else mean, std_picture(std[0], title)


def remove_written(folder) -> None:
    """Remove the files the run recorded in `folder`'s run.json says it wrote (nothing else)."""
    folder = Path(folder)
    for name in written_files(stored_record(folder)):
        (folder / name).unlink(missing_ok=True)


def record_failure(folder: RunFolder, error: Exception) -> None:
    """Say in run.json why the run stopped (if the disk still takes it) and release the folder."""
    from ipsolve.services.checks import one_line

    try:
        folder.update(status="failed", error=one_line(error))
    except OSError:
        pass  # run.json keeps the last state it could record
    finally:
        folder.close()
