"""The output folder of one `ipsolve restore` run.

Each preview is written the moment it exists (`preview_{step:02d}_nfe{nfe:03d}.png`), then the final
image (`final.png`, the last preview), the anytime strip (`strip.png`: previews side by side, one row
per sample), an animation (`anytime.gif`) and the run record (`run.json`). Every file is written
atomically, so a user can watch the folder while the run goes on.

One run at a time: `start` locks the folder (a second run into it fails at once with one line), removes
what an earlier run left and writes run.json with `"status": "running"`; every preview rewrites it, so
after any failure (a full disk, a crash) run.json still says how far the run got.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ipsolve.folder_lock import folder_lock
from ipsolve.imageio import atomic_path, from_model, grid_image, save_gif, save_grid, save_image

EARLIER_OUTPUTS = ("preview_*_nfe*.png", "final.png", "strip.png", "anytime.gif", "run.json")


class RunFolder:
    """Writes one run's outputs into `path` and keeps the previews for the strip and the GIF."""

    def __init__(self, path):
        self.path = Path(path)
        self.frames: list[torch.Tensor] = []  # previews in [0, 1], each (B, C, H, W) on the CPU
        self.previews: list[dict] = []
        self.record: dict = {}
        self._lock = contextlib.ExitStack()

    def start(self, record: dict) -> None:
        """Lock the folder (ValueError if another run holds it), remove an earlier run's outputs and
        write run.json = `record` with status "running"."""
        self._lock.enter_context(folder_lock(self.path))
        for pattern in EARLIER_OUTPUTS:
            for earlier in self.path.glob(pattern):
                earlier.unlink()
        self.record = {**record, "status": "running"}
        self._write_record()

    def update(self, **fields) -> None:
        """Rewrite run.json with `fields` changed (how far the run got, an error)."""
        self.record.update(fields)
        self._write_record()

    def close(self) -> None:
        """Release the folder (also after an error)."""
        self._lock.close()

    def add_preview(self, preview, elapsed_s: float) -> Path:
        """Write one preview (a grid when it holds several samples) and remember it."""
        image = from_model(preview.x0).detach().to("cpu", torch.float32).clamp(0, 1)
        path = self.path / f"preview_{preview.step:02d}_nfe{preview.nfe:03d}.png"
        save_image(image[0] if len(image) == 1 else image, path)
        self.frames.append(image)
        self.previews.append({"step": preview.step, "nfe": preview.nfe, "file": path.name,
                              "elapsed_s": round(elapsed_s, 3)})
        self.update(nfe=preview.nfe, elapsed_s=round(elapsed_s, 3))
        return path

    def finish(self, record: dict) -> None:
        """Write final.png (the last preview), strip.png, anytime.gif and run.json (`record` + previews,
        status "interrupted" or "done"), then release the folder."""
        if self.frames:
            final = self.frames[-1]
            save_image(final[0] if len(final) == 1 else final, self.path / "final.png")
            by_sample = torch.stack(self.frames, dim=1).flatten(0, 1)  # sample-major: one row per sample
            save_grid(by_sample, self.path / "strip.png", nrow=len(self.frames))
            save_gif([_batch_picture(frame) for frame in self.frames], self.path / "anytime.gif")
        status = "interrupted" if record.get("interrupted") else "done"
        self.record = {**self.record, **record, "status": status}
        self._write_record()
        self.close()

    def _write_record(self) -> None:
        with atomic_path(self.path / "run.json") as tmp:
            Path(tmp).write_text(json.dumps({**self.record, "previews": self.previews}, indent=2) + "\n")


def _batch_picture(frame: torch.Tensor) -> torch.Tensor:
    """One (C, H, W) picture of a batch of samples: the image itself, or a grid as save_grid draws it."""
    return frame[0] if len(frame) == 1 else grid_image(frame)


def record_failure(folder: RunFolder, error: Exception) -> None:
    """Say in run.json why the run stopped (if the disk still takes it) and release the folder."""
    from ipsolve.cli_support import one_line

    try:
        folder.update(status="failed", error=one_line(error))
    except OSError:
        pass  # run.json keeps the last state it could record
    finally:
        folder.close()
