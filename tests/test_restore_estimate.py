"""`ipsolve restore FILE --samples K --estimate mean` (issue 20, item 2, restore): the mean pictures are the
mean of the K samples the library draws with the same seed, std.png is a colour-mapped map with a scale
bar, run.json records K and the estimate, refusals leave the tree as it was, and the memory estimate
counts the K rows."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import solvers
from ipsolve.config import restore_defaults
from ipsolve.imageio import from_model, save_image
from ipsolve.measurement import read_measurement
from ipsolve.models import load_model
from test_plans import refused, run, shipped_files

K = 4
SEED = 5
FAST = ["--outer", "2", "--inner", "3", "--quiet"]
GAUSSIAN = ["--model", "gaussian:1x8x8", "--task", "deno", "--sigma-y", "0.1"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An 8x8 gray measurement without sidecar, the shipped sr4 digit, and a folder `in` of two digits."""
    save_image(torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)), tmp_path / "noisy.png")
    monkeypatch.chdir(tmp_path)
    return shipped_files(tmp_path, ("digit_sr4.png", "digit_sr4.png.json"), "ab")


def library_samples(vanilla: bool):
    """The K samples per preview that `solvers` draws for noisy.png with the seed, by hand: [(nfe, (K, C, H, W))]."""
    model = load_model("gaussian:1x8x8", "cpu")
    measurement = read_measurement("noisy.png", task="deno", sigma_y=0.2)
    op = measurement.op
    y = measurement.y.reshape(-1, *op.measurement_shape)[:1]
    options = restore_defaults("ddrm", op.name, {})
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        if vanilla:
            timesteps = solvers.plain_ddrm_timesteps(6, len(model.alphas_cumprod))
            x0 = solvers.ddrm(model, y=solvers.estimates.repeat_for_samples(y, K), op=op, sigma_y=0.2,
                              timesteps=timesteps, generator=generator, **options)
            return [(6, x0)]
        run = solvers.nested(model, inner="ddrm", outer_steps=2, inner_steps=3, generator=generator, y=y, op=op,
                             sigma_y=0.2, samples=K, **options)
        return [(preview.nfe, preview.x0) for preview in run]


def eight_bit(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


@pytest.mark.parametrize("vanilla", [False, True], ids=["nested", "vanilla"])
def test_mean_png_is_the_mean_of_the_k_library_samples(work, capsys, vanilla):
    code, _, _ = run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--seed", SEED, "--samples", K,
                     "--estimate", "mean", "--out", "out", *(["--vanilla"] if vanilla else []))
    assert code == 0
    record = json.loads((work / "out" / "run.json").read_text())
    previews = library_samples(vanilla)
    if vanilla:
        record["previews"] = record["previews"][-1:]  # the plain solver's x̂₀ at earlier marks: not drawn here
    assert [entry["nfe"] for entry in record["previews"]] == [nfe for nfe, _ in previews]
    for entry, (nfe, samples) in zip(record["previews"], previews):
        assert samples.shape[0] == K
        by_hand = from_model(samples.double()).mean(dim=0)[0].clamp(0, 1).numpy() * 255  # [0, 1] then 8 bits
        assert entry["mean_file"] == f"preview_{entry['step']:02d}_nfe{nfe:03d}_mean.png"
        assert np.abs(eight_bit(work / "out" / entry["mean_file"]) - by_hand).max() <= 1.5
    assert np.abs(eight_bit(work / "out" / "mean.png") - by_hand).max() <= 1.5
    assert (work / "out" / record["previews"][-1]["std_file"]).is_file()


def test_std_png_is_a_colour_map_with_a_scale_bar(work, capsys):
    assert run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--samples", K, "--estimate", "mean",
               "--out", "out")[0] == 0
    std = np.asarray(Image.open(work / "out" / "std.png"))
    height, width, channels = std.shape
    assert channels == 3 and height >= 256 and width >= 256 + 60  # the 8x8 map enlarged, a bar beside it
    colours = {tuple(pixel) for pixel in std.reshape(-1, 3)}
    assert len(colours) > 50  # the map and the bar's gradient, its labels
    assert std.std() > 10
    saturated = std.max(axis=2).astype(int) - std.min(axis=2)
    assert (saturated > 60).mean() > 0.05  # colour, not grey
    for name in ("preview_01_nfe003_std.png", "preview_02_nfe006_std.png"):
        assert Image.open(work / "out" / name).size == (width, height)


def test_run_json_records_samples_and_estimate(work, capsys):
    assert run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--samples", K, "--estimate", "mean",
               "--out", "out")[0] == 0
    record = json.loads((work / "out" / "run.json").read_text())
    assert record["arguments"]["samples"] == K and record["arguments"]["estimate"] == "mean"
    assert record["samples"] == K and record["estimate"] == "mean" and record["status"] == "done"
    names = {path.name for path in (work / "out").iterdir() if not path.name.startswith(".")}
    assert names == {"run.json", "final.png", "strip.png", "anytime.gif", "mean.png", "std.png",
                     *(f"preview_0{step}_nfe00{nfe}{end}.png" for step, nfe in ((1, 3), (2, 6))
                       for end in ("", "_mean", "_std"))}
    # a sample-estimate run with other settings is refused by name; with --overwrite it removes every file
    line = refused(capsys, work, "restore", "noisy.png", *GAUSSIAN, *FAST, "--samples", K, "--out", "out")
    assert "--estimate mean" in line and "--estimate sample" in line
    assert run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--samples", K, "--out", "out",
               "--overwrite")[0] == 0
    names = {path.name for path in (work / "out").iterdir() if not path.name.startswith(".")}
    assert names == {"run.json", "final.png", "strip.png", "anytime.gif", "preview_01_nfe003.png",
                     "preview_02_nfe006.png"}  # --estimate sample: today's files (final.png a grid of K)
    assert Image.open(work / "out" / "final.png").size != (8, 8)


def test_an_earlier_run_without_samples_recorded_drew_one(work, capsys):
    assert run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--out", "out")[0] == 0
    path = work / "out" / "run.json"
    record = json.loads(path.read_text())
    for name in ("samples", "estimate"):
        del record["arguments"][name]
    path.write_text(json.dumps(record))
    assert run(capsys, "restore", "noisy.png", *GAUSSIAN, *FAST, "--out", "out")[0] == 0
    line = refused(capsys, work, "restore", "noisy.png", *GAUSSIAN, *FAST, "--samples", 2, "--out", "out")
    assert "--samples 1" in line and "--samples 2" in line


@pytest.mark.parametrize("args, words", [
    (["noisy.png", *GAUSSIAN, "--estimate", "mean"], "--estimate mean needs --samples 2 or more"),
    (["noisy.png", *GAUSSIAN, "--samples", "1", "--estimate", "mean"], "--estimate mean needs --samples 2 or more"),
    (["in", "--estimate", "mean"], "--estimate mean needs --samples 2 or more"),
    (["noisy.png", *GAUSSIAN, "--samples", "2", "--batch", "2"], "drop --batch"),
    (["noisy.png", *GAUSSIAN, "--samples", "0"], "--samples"),
    (["noisy.png", *GAUSSIAN, "--samples", "2", "--estimate", "median"], "--estimate"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(work, capsys, args, words):
    line = refused(capsys, work, "restore", *args, *FAST, "--out", "out")
    assert words in line
    assert not (work / "out").exists()


def test_the_memory_estimate_counts_the_k_rows(work, monkeypatch):
    import ipsolve.resources as resources
    from ipsolve.models.unet import DDPMUNet
    from ipsolve.services.restore_request import RestoreRequest, plan_restore

    model = load_model("embedded", "cpu")
    unet = next(module for module in model.modules() if isinstance(module, DDPMUNet))
    shape = (1, 32, 32)
    for rows in (1, 4):
        assert resources.estimate_bytes(model, shape, rows) == (
            resources.SOLVER_IMAGES * rows * 32 * 32 * 8 + resources.unet_forward_bytes(unet, 32, 32, rows))
    assert resources.estimate_bytes(model, shape, 4) == 4 * resources.estimate_bytes(model, shape, 1)

    room = 2.5 * resources.estimate_bytes(model, shape, 1)  # 2 rows fit, 3 do not
    monkeypatch.setattr(resources, "available_bytes", lambda device: int(room / resources.USABLE_FRACTION))
    request = dict(measurement="digit_sr4.png", outer=1, inner=2, device="cpu", out="out")
    plan_restore(RestoreRequest(**request, samples=2, estimate="mean"))
    with pytest.raises(ValueError, match="a batch of 4 "):
        plan_restore(RestoreRequest(**request, samples=4, estimate="mean"))
    with pytest.raises(ValueError, match="a batch of 4 "):
        plan_restore(RestoreRequest(**request, batch=4))
    assert not (work / "out").exists()
