"""Every number of results.csv is reproducible from the PNG files `ipsolve eval` leaves on disk.

PSNR recomputed with numpy from the 8-bit clean/NNNNN.png and each output PNG, LPIPS by the lpips network
called directly on those files, the nested runs' distance to their final output from the final's PNG:
means over the images equal the stored values; and the saved outputs are the solver's, rounded to 8 bits
(the metrics clamp, so a consistent but wrong output would pass the first checks). The data images are
45×38, so the clean images are resampled (and quantised to 8 bits) before evaluation.
"""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ipsolve import metrics
from ipsolve.services.evaluation import run_evaluation

DATA = Path(__file__).parent / "data"
BUDGETS = (2, 4)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproducible")
    data = root / "data"
    data.mkdir()
    digits = torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"][:3]
    for i, digit in enumerate(digits):
        Image.fromarray(digit.reshape(32, 32).numpy()).resize((38, 45), Image.BICUBIC).save(data / f"d{i}.png")
    config = root / "eval.yml"
    config.write_text(yaml.safe_dump({
        "model": "gaussian:1x32x32", "seed": 2, "batch_size": 2, "budgets": list(BUDGETS),
        "tasks": [{"name": "sr4", "operator": "sr4", "sigma_y_pixel": 0.05},
                  {"name": "inp", "operator": "inp", "sigma_y_pixel": 0.02}],
        "methods": {"ddrm": {}, "nested": {"inner_steps": 2}}, "metrics": {"lpips": "alex", "fid": None}}))
    out, _ = run_evaluation(str(config), str(data), str(root / "out"), fid=False)
    with open(out / "results.csv") as handle:
        return out, list(csv.DictReader(handle))


def pixels(path):
    """The PNG as float64 values in [0, 1] (C, H, W)."""
    array = np.asarray(Image.open(path), dtype=np.float64) / 255
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def numpy_psnr(image, reference):
    return 10 * math.log10(1 / np.mean((image - reference) ** 2))


@pytest.fixture(scope="module")
def lpips_alex():
    return metrics.load_lpips("alex")


def lpips_of(network, image, reference):
    """The lpips network on two gray images, repeated to RGB, in its native [-1, 1] range."""
    to_input = lambda array: torch.from_numpy(array).float()[None].expand(1, 3, -1, -1) * 2 - 1  # noqa: E731
    with torch.no_grad():
        return float(network(to_input(image), to_input(reference)))


def test_every_psnr_and_lpips_in_results_csv_is_recomputed_from_the_saved_pngs(evaluated, lpips_alex):
    out, rows = evaluated
    assert len(rows) == 2 * 2 * len(BUDGETS)
    for row in rows:
        clean = [pixels(out / "clean" / f"{i:05d}.png") for i in range(3)]
        outputs = [pixels(out / row["task"] / row["method"] / f"nfe{int(row['budget']):03d}" / f"{i:05d}.png")
                   for i in range(3)]
        assert int(row["images"]) == 3
        assert float(row["psnr"]) == pytest.approx(np.mean([numpy_psnr(x, c) for x, c in zip(outputs, clean)]),
                                                    rel=1e-6), row
        assert float(row["lpips"]) == pytest.approx(
            np.mean([lpips_of(lpips_alex, x, c) for x, c in zip(outputs, clean)]), rel=1e-4, abs=1e-6), row


def test_the_nested_runs_distance_to_their_final_is_recomputed_from_the_saved_pngs(evaluated, lpips_alex):
    out, rows = evaluated
    for row in (r for r in rows if r["method"] == "nested"):
        folder = out / row["task"] / "nested"
        pairs = [(pixels(folder / f"nfe{int(row['budget']):03d}" / f"{i:05d}.png"),
                  pixels(folder / f"nfe{BUDGETS[-1]:03d}" / f"{i:05d}.png")) for i in range(3)]
        assert float(row["to_final_mse"]) == pytest.approx(np.mean([np.mean((x - f) ** 2) for x, f in pairs]),
                                                           rel=1e-6, abs=1e-12), row
        assert float(row["to_final_lpips"]) == pytest.approx(
            np.mean([lpips_of(lpips_alex, x, f) for x, f in pairs]), rel=1e-4, abs=1e-6), row


def test_the_saved_outputs_are_the_solvers_outputs_rounded_to_8_bits(evaluated):
    """Plain DDRM at 4 NFEs on sr4 run here with each image's own draws, from the saved clean images."""
    import degradations
    import solvers
    from ipsolve.distributed import image_generator, per_image_noise
    from ipsolve.models import load_model

    out, _ = evaluated
    clean = torch.stack([torch.from_numpy(pixels(out / "clean" / f"{i:05d}.png")) for i in range(3)])
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    noise = per_image_noise([image_generator(2, i) for i in range(3)])
    y = op.H(2 * clean - 1)
    y = y + 0.1 * noise(tuple(y.shape)).to(y)
    x0 = solvers.ddrm(load_model("gaussian:1x32x32"), y, op, 0.1, solvers.ddrm_timesteps(4), noise=noise)
    expected = np.round(np.clip((x0.numpy() + 1) / 2, 0, 1) * 255)
    saved = np.stack([pixels(out / "sr4" / "ddrm" / "nfe004" / f"{i:05d}.png") * 255 for i in range(3)])
    assert np.abs(saved - expected).max() <= 1 and np.mean(saved != expected) < 0.01
