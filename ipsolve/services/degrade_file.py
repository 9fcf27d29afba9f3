"""A clean image file degraded into a measurement file and its sidecar: the service behind `ipsolve degrade`.

`plan_degrade(image, output, task, …)` checks everything first (a .png to write where we may write, the
input files, a mask only for inpainting, no input overwritten) and computes the measurement (`DegradePlan`);
`run_degrade_plan(plan)` only writes OUT and OUT.json (and OUT's mask) with
`ipsolve.measurement.write_measurement`; `degrade_file` does both. Noise is given in [0, 1] pixel units.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ipsolve.services.checks import check_writable_folder, existing_file


class Degraded(NamedTuple):
    output: Path
    op: object             # the degradations operator applied
    image_shape: tuple     # (C, H, W) of the clean image as degraded


@dataclass(frozen=True)
class DegradePlan:
    """`ipsolve degrade` checked and computed (`plan_degrade`): `run_degrade_plan` only writes it."""
    output: Path
    y: object              # the measurement, model units
    op: object             # the degradations operator applied
    sigma_y: float         # [0, 1] pixel units
    image_shape: tuple     # (C, H, W) of the clean image as degraded


def degrade_file(image, output, task: str, sigma_y: float = 0.0, *, seed: int = 0, mask=None, size=None,
                 gray: bool = False) -> Degraded:
    """Validate everything, then write the measurement `output` and its sidecar; ValueError / OSError
    (one line, naming `ipsolve degrade`'s options) before anything is written."""
    return run_degrade_plan(plan_degrade(image, output, task, sigma_y, seed=seed, mask=mask, size=size, gray=gray))


def plan_degrade(image, output, task: str, sigma_y: float = 0.0, *, seed: int = 0, mask=None, size=None,
                 gray: bool = False) -> DegradePlan:
    """The checked plan of a degradation (every file read, the measurement computed); ValueError / OSError
    before anything is written."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the measurement must be a .png file (lossless)")
    if output.is_dir():
        raise ValueError(f"{output} is a folder: name the measurement file to write")
    check_writable_folder(output.parent)
    source = existing_file(image, "image")
    mask_path = None if mask is None else existing_file(mask, "mask")
    if mask_path is not None and not task.split("+")[-1].startswith("inp"):
        raise ValueError(f"--mask is for inpainting (inp), not {task!r}")
    if task.split("+")[-1] == "inp_mask" and mask_path is None:
        raise ValueError("--task inp_mask needs --mask PNG (white = observed, black = missing)")
    _check_inputs_survive(output, [source, mask_path])

    import degradations  # the checks above run before these slow imports
    from ipsolve.degrade import degrade, resize
    from ipsolve.imageio import load_image

    clean = load_image(source, mode="L" if gray else None)
    if size is not None:
        clean = resize(clean, size)
    mask_image = None if mask_path is None else degradations.load_mask(mask_path)
    y, op = degrade(clean, task, 2 * sigma_y, seed=seed, mask=mask_image)
    return DegradePlan(output, y, op, sigma_y, tuple(clean.shape))


def run_degrade_plan(plan: DegradePlan) -> Degraded:
    """Write the plan's measurement, its sidecar (and its mask)."""
    from ipsolve.measurement import write_measurement

    write_measurement(plan.output, plan.y, plan.op, 2 * plan.sigma_y)
    return Degraded(plan.output, plan.op, plan.image_shape)


def _check_inputs_survive(output: Path, inputs) -> None:
    """ValueError when writing OUT, OUT.json or OUT's mask would replace one of the input files."""
    from ipsolve.measurement import mask_path_for, sidecar_path

    written = [output, Path(sidecar_path(output)), Path(mask_path_for(output))]
    for source in filter(None, inputs):
        for path in written:
            if path.exists() and path.samefile(source):
                raise ValueError(f"writing {path} would replace the input {source}: choose another -o")
