"""`ipsolve restore FOLDER --samples K [--estimate mean]` (issue 20: folder restore takes the options of a file):
each measurement's run folder holds the files of `ipsolve restore FILE --samples K`, its mean pictures are the
mean of the K samples the library draws from that image's own generator (so they do not depend on the other
measurements of the batch), run.json and the job key record K and the estimate (another K is never reused),
the memory estimate counts batch × K rows, and the combinations a file refuses are refused for a folder too."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import solvers
from ipsolve import distributed
from ipsolve.config import restore_defaults
from ipsolve.imageio import from_model, save_image
from ipsolve.measurement import read_measurement
from ipsolve.models import load_model
from test_plans import refused, run

K = 3
SEED = 7
FAST = ["--outer", "2", "--inner", "2", "--quiet"]
GAUSSIAN = ["--model", "gaussian:1x8x8", "--task", "deno", "--sigma-y", "0.1"]
NAMES = ("a", "b", "c")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder `in` of three different 8x8 gray measurements without sidecars."""
    (tmp_path / "in").mkdir()
    for i, name in enumerate(NAMES):
        save_image(torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(10 + i)), tmp_path / "in" / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def library_samples(index: int, name: str):
    """The K samples per preview the library draws for in/NAME.png alone, every draw of its K rows taken in
    turn from the image's generator (seed·1_000_003 + index), by hand: [(nfe, (K, C, H, W))]."""
    model = load_model("gaussian:1x8x8", "cpu")
    measurement = read_measurement(f"in/{name}.png", task="deno", sigma_y=0.2)
    generator = torch.Generator().manual_seed(SEED * 1_000_003 + index)

    def noise(shape):
        assert shape[0] == K
        return torch.stack([torch.randn(shape[1:], generator=generator) for _ in range(K)])

    with torch.no_grad():
        run_ = solvers.nested(model, inner="ddrm", outer_steps=2, inner_steps=2, noise=noise, y=measurement.y,
                              op=measurement.op, sigma_y=0.2, samples=K,
                              **restore_defaults("ddrm", measurement.op.name, {}))
        return [(preview.nfe, preview.x0) for preview in run_]


def eight_bit(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def grid_tiles(grid: np.ndarray) -> list:
    """The K = 3 8x8 tiles of a grid picture: 2 a row, a 2-pixel border around every tile."""
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 10)
    return [grid[2 + (k // 2) * 10:2 + (k // 2) * 10 + 8, 2 + (k % 2) * 10:2 + (k % 2) * 10 + 8] for k in range(K)]


def restore_folder(capsys, *extra):
    return run(capsys, "restore", "in", *GAUSSIAN, *FAST, "--seed", SEED, "--samples", K, "--batch-size", 2,
               "--out", "out", *extra)


def test_each_measurements_mean_is_the_mean_of_its_own_k_library_samples(work, capsys):
    code, printed, _ = restore_folder(capsys, "--estimate", "mean")
    assert code == 0 and "3 restored" in printed
    for index, name in enumerate(NAMES):  # a, b share a batch of 2 x K rows, c is alone
        folder = work / "out" / name
        record = json.loads((folder / "run.json").read_text())
        previews = library_samples(index, name)
        assert [entry["nfe"] for entry in record["previews"]] == [nfe for nfe, _ in previews] == [2, 4]
        for entry, (nfe, samples) in zip(record["previews"], previews):
            by_hand = from_model(samples.double()).mean(dim=0)[0].clamp(0, 1).numpy() * 255
            assert np.abs(eight_bit(folder / entry["mean_file"]) - by_hand).max() <= 1.5, (name, nfe)
            tiles = grid_tiles(eight_bit(folder / entry["file"]))  # the preview: a grid of the K samples
            for k in range(K):
                sample = from_model(samples[k].double())[0].clamp(0, 1).numpy() * 255
                assert np.abs(tiles[k] - sample).max() <= 1.5, (name, nfe, k)
        assert np.abs(eight_bit(folder / "mean.png") - by_hand).max() <= 1.5
        # the samples differ, so the std map is not flat zero: it is a colour map of a real spread
        assert by_hand.std() > 0 and (folder / "std.png").is_file()
        assert record["samples"] == K and record["estimate"] == "mean"
        assert record["settings"]["samples"] == K and record["settings"]["estimate"] == "mean"
        names = {path.name for path in folder.iterdir() if not path.name.startswith(".")}
        assert names == {"run.json", "final.png", "strip.png", "anytime.gif", "mean.png", "std.png",
                         *(f"preview_0{step}_nfe00{nfe}{end}.png" for step, nfe in ((1, 2), (2, 4))
                           for end in ("", "_mean", "_std"))}


def test_the_means_of_two_measurements_of_a_batch_are_not_swapped_or_shifted(work, capsys):
    """Rows b·K … b·K + K − 1 are measurement b's: a slice off by one row or by one measurement mixes them."""
    assert restore_folder(capsys, "--estimate", "mean")[0] == 0
    means = {name: eight_bit(work / "out" / name / "mean.png") for name in NAMES}
    for index, name in enumerate(NAMES):
        by_hand = from_model(library_samples(index, name)[-1][1].double()).mean(dim=0)[0].clamp(0, 1).numpy() * 255
        errors = {other: np.abs(means[other] - by_hand).max() for other in NAMES}
        assert min(errors, key=errors.get) == name and errors[name] <= 1.5, errors


def test_a_rerun_reuses_only_the_same_samples_and_estimate(work, capsys):
    assert restore_folder(capsys, "--estimate", "mean")[0] == 0
    code, printed, _ = restore_folder(capsys, "--estimate", "mean")
    assert code == 0 and "3 reused" in printed
    line = refused(capsys, work, "restore", "in", *GAUSSIAN, *FAST, "--seed", SEED, "--samples", K + 1,
                   "--estimate", "mean", "--batch-size", 2, "--out", "out")
    assert f"--samples {K}" in line and f"--samples {K + 1}" in line
    line = refused(capsys, work, "restore", "in", *GAUSSIAN, *FAST, "--seed", SEED, "--samples", K,
                   "--batch-size", 2, "--out", "out")
    assert "--estimate mean" in line and "--estimate sample" in line
    code, printed, _ = restore_folder(capsys, "--overwrite")  # --estimate sample: today's files, grids of K
    assert code == 0 and "3 restored" in printed
    names = {path.name for path in (work / "out" / "a").iterdir() if not path.name.startswith(".")}
    assert names == {"run.json", "final.png", "strip.png", "anytime.gif", "preview_01_nfe002.png",
                     "preview_02_nfe004.png"}


def test_a_folder_restored_before_samples_existed_drew_one(work, capsys):
    assert run(capsys, "restore", "in", *GAUSSIAN, *FAST, "--out", "out")[0] == 0
    for name in NAMES:  # as an ipsolve before --samples wrote it
        path = work / "out" / name / "run.json"
        record = json.loads(path.read_text())
        for key in ("samples", "estimate"):
            del record["settings"][key]
        path.write_text(json.dumps(record))
    assert run(capsys, "restore", "in", *GAUSSIAN, *FAST, "--out", "out")[0] == 0  # the same settings
    line = refused(capsys, work, "restore", "in", *GAUSSIAN, *FAST, "--samples", 2, "--out", "out")
    assert "--samples 1" in line and "--samples 2" in line


@pytest.mark.parametrize("args, words", [
    (["--estimate", "mean"], "--estimate mean needs --samples 2 or more"),
    (["--samples", "1", "--estimate", "mean"], "--estimate mean needs --samples 2 or more"),
    (["--samples", "2", "--batch", "2"], "drop --batch"),
    (["--samples", "2", "--estimate", "median"], "--estimate"),
])
def test_a_folder_refuses_what_a_file_refuses(work, capsys, args, words):
    line = refused(capsys, work, "restore", "in", *GAUSSIAN, *FAST, *args, "--out", "out")
    assert words in line
    assert not (work / "out").exists()


def test_the_folder_memory_estimate_counts_batch_size_times_k_rows(work, monkeypatch):
    import ipsolve.resources as resources
    from ipsolve.services.restore_request import RestoreRequest, plan_restore

    model = load_model("gaussian:1x8x8", "cpu")
    shape = (1, 8, 8)
    room = 6.5 * resources.estimate_bytes(model, shape, 1)  # 6 rows fit, 8 do not
    monkeypatch.setattr(resources, "available_bytes", lambda device: int(room / resources.USABLE_FRACTION))
    monkeypatch.setattr(resources, "estimate_bytes", lambda model, image_shape, rows: rows * room / 6.5)
    request = dict(measurement="in", task="deno", sigma_y=0.1, model="gaussian:1x8x8", outer=1, inner=2,
                   device="cpu", out="out")
    plan = plan_restore(RestoreRequest(**request, batch_size=2, samples=3, estimate="mean"))
    distributed.stop(plan.workers)
    with pytest.raises(ValueError, match="a batch of 8 "):
        plan_restore(RestoreRequest(**request, batch_size=2, samples=4, estimate="mean"))
    with pytest.raises(ValueError, match="a batch of 8 "):
        plan_restore(RestoreRequest(**request, batch_size=8))
    assert not (work / "out").exists()
