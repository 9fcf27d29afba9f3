"""`samples: K` in an eval config (issue 20, evaluation): every method draws K samples per image in one batch;
results.csv gives sample 1 of K (a posterior sample, comparable with K = 1) and the mean of K; calibration.csv
the fraction of pixels whose mean error lies within 1 / 2 / 3 std.

Checked against numbers made without the code: the coverage of hand-made arrays counted by hand and of
Gaussian errors against Φ; a tiny evaluation whose K samples are drawn here by hand (each image's generator,
its K rows in turn), whose mean images and calibration are recomputed with numpy, and whose mean rows' PSNR
and LPIPS are recomputed from the saved mean PNGs; K in the keys, the refusals and the memory estimate."""
import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import degradations
import solvers
from ipsolve import distributed, metrics
from ipsolve.services.evaluation import plan_eval, run_evaluation

DATA = Path(__file__).parent / "data"
K = 3
SEED = 2
COUNT = 3
BUDGETS = (2, 4)


# ------------------------------------------------------------------ the coverage itself, by hand

def test_std_coverage_counts_by_hand_with_its_boundaries_and_zero_std():
    """One image of 8 pixels: error / std ratios 0.5, 1 (exactly), 1.5, 2 (exactly), 2.5, 3 (exactly), a
    zero-std pixel with error 0 and one with error 0.25. Inclusive bounds: within 1 std are 0.5, 1.0 and
    the exact zero; within 2 also 1.5, 2.0; within 3 also 2.5, 3.0 (powers of two: no rounding)."""
    std = torch.tensor([0.5, 0.25, 0.5, 0.125, 0.25, 0.0625, 0.0, 0.0]).reshape(1, 1, 2, 4)
    error = torch.tensor([0.25, 0.25, 0.75, 0.25, 0.625, 0.1875, 0.0, 0.25]).reshape(1, 1, 2, 4)
    clean = torch.full((1, 1, 2, 4), 0.125)
    signs = torch.tensor([1, -1, 1, 1, -1, 1, 1, -1.0]).reshape(1, 1, 2, 4)
    covered = metrics.std_coverage(clean + signs * error, std, clean)
    assert covered.tolist() == [[3 / 8, 5 / 8, 7 / 8]]
    # a variance for the std (0.25 for 0.5, …) or a width of 2 for 3 would count other pixels
    assert metrics.std_coverage(clean + signs * error, std ** 2, clean).tolist() != covered.tolist()
    assert metrics.COVERAGE_WIDTHS == (1, 2, 3)


def test_std_coverage_of_gaussian_errors_is_the_normal_probability():
    """mean = clean + std·z, z standard normal: the fractions are erf(c / √2) (68.27 / 95.45 / 99.73 %)."""
    generator = np.random.default_rng(0)
    std = generator.uniform(0.01, 0.3, size=(4, 3, 128, 128))
    clean = generator.uniform(0, 1, size=std.shape)
    mean = clean + std * generator.standard_normal(std.shape)
    covered = metrics.std_coverage(*(torch.from_numpy(a) for a in (mean, std, clean))).numpy()
    expected = [math.erf(c / math.sqrt(2)) for c in (1, 2, 3)]
    assert np.abs(covered - expected).max() < 0.006  # 49,152 pixels an image: the binomial sd is ≤ 0.0021


@pytest.mark.parametrize("k", [2, 4, 16])
def test_exact_coverage_is_what_exact_gaussian_posterior_draws_give(k):
    """Simulated with numpy: per pixel a posterior N(μ, σ²), the clean value and K samples drawn from it, the
    mean and unbiased std of the K; the fraction of |mean − clean| ≤ c·std against `exact_coverage(K)`."""
    generator = np.random.default_rng(k)
    pixels_ = 400_000
    mu, sigma = generator.uniform(0, 1, pixels_), generator.uniform(0.01, 0.2, pixels_)
    clean = mu + sigma * generator.standard_normal(pixels_)
    draws = mu[:, None] + sigma[:, None] * generator.standard_normal((pixels_, k))
    error, std = np.abs(draws.mean(axis=1) - clean), draws.std(axis=1, ddof=1)
    simulated = [np.mean(error <= c * std) for c in (1, 2, 3)]
    assert np.abs(np.array(metrics.exact_coverage(k)) - simulated).max() < 0.003  # binomial sd ≤ 0.0008
    with pytest.raises(ValueError, match="2 or more samples"):
        metrics.exact_coverage(1)


def test_std_coverage_refuses_arrays_of_other_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.std_coverage(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 2, 2))


# ------------------------------------------------------------------ a tiny evaluation, recomputed

def write_config(root: Path, **changes) -> Path:
    config = root / "eval.yml"
    config.write_text(yaml.safe_dump({
        "model": "gaussian:1x32x32", "seed": SEED, "batch_size": 2, "samples": K, "budgets": list(BUDGETS),
        "tasks": [{"name": "sr4", "operator": "sr4", "sigma_y_pixel": 0.05}],
        "methods": {"ddrm": {}, "nested": {"inner_steps": 2}}, "metrics": {"lpips": "alex", "fid": None},
        **changes}))
    return config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    (root / "data").mkdir()
    for i, digit in enumerate(torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"][:COUNT]):
        Image.fromarray(digit.reshape(32, 32).numpy()).save(root / "data" / f"d{i}.png")
    out, report = run_evaluation(str(write_config(root)), str(root / "data"), str(root / "out"), fid=False)
    return root, out, report


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.float64)[None] / 255


def numpy_psnr(image, reference):
    return 10 * math.log10(1 / np.mean((image - reference) ** 2))


def samples_by_hand(out, method: str, budget: int) -> np.ndarray:
    """(COUNT, K, 1, 32, 32) model-space samples of sr4 drawn here: y from each saved clean image with the
    image's generator, then its K rows drawing in turn from that generator."""
    from ipsolve.models import load_model

    model = load_model("gaussian:1x32x32")
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    drawn = []
    for i in range(COUNT):
        generator = torch.Generator().manual_seed(SEED * 1_000_003 + i)
        clean = torch.from_numpy(pixels(out / "clean" / f"{i:05d}.png")).float()[None]
        y = op.H(2 * clean - 1)
        y = y + 0.1 * torch.randn(y.shape[1:], generator=generator)[None]

        def noise(shape):
            return torch.stack([torch.randn(shape[1:], generator=generator) for _ in range(shape[0])])

        ys = y.repeat(K, *[1] * (y.dim() - 1))
        with torch.no_grad():
            if method == "ddrm":
                x0 = solvers.ddrm(model, ys, op, 0.1, solvers.ddrm_timesteps(budget), noise=noise)
            else:
                run = solvers.nested(model, inner="ddrm", outer_steps=max(BUDGETS) // 2, inner_steps=2, y=y, op=op,
                                     sigma_y=0.1, noise=noise, samples=K)
                x0 = next(preview.x0 for preview in run if preview.nfe == budget)
        drawn.append(x0.double().numpy())
    return np.stack(drawn)


def eight_bit(model_space: np.ndarray) -> np.ndarray:
    return np.round(np.clip((model_space + 1) / 2, 0, 1) * 255) / 255


@pytest.mark.parametrize("method, budget", [("ddrm", 4), ("nested", 2), ("nested", 4)])
def test_the_sample_mean_and_calibration_are_those_of_k_samples_drawn_by_hand(evaluated, method, budget):
    _, out, _ = evaluated
    drawn = samples_by_hand(out, method, budget)
    folder = out / "sr4" / method / f"nfe{budget:03d}"
    saved_samples = np.stack([pixels(folder / f"{i:05d}.png") for i in range(COUNT)])
    saved_means = np.stack([pixels(folder / f"{i:05d}_mean.png") for i in range(COUNT)])
    for saved, expected in ((saved_samples, eight_bit(drawn[:, 0])), (saved_means, eight_bit(drawn.mean(axis=1)))):
        assert np.abs(saved - expected).max() <= 1 / 255 + 1e-9 and np.mean(saved != expected) < 0.01
    assert np.abs(saved_samples - saved_means).max() > 10 / 255  # the mean is no sample
    clean = np.stack([pixels(out / "clean" / f"{i:05d}.png") for i in range(COUNT)])
    error = np.abs(eight_bit(drawn.mean(axis=1)) - clean)
    std = drawn.std(axis=1, ddof=1) / 2  # model units → [0, 1] pixel units
    row, = [r for r in read_csv(out / "calibration.csv") if (r["method"], int(r["budget"])) == (method, budget)]
    assert int(row["images"]) == COUNT and int(row["samples"]) == K
    for width in (1, 2, 3):
        by_hand = np.mean(error <= width * std)
        assert float(row[f"within_{width}std"]) == pytest.approx(by_hand, abs=0.005), width
    assert float(row["zero_std"]) == pytest.approx(np.mean(std == 0), abs=0.005)
    widths = [float(row[f"within_{w}std"]) for w in (1, 2, 3)]
    assert widths[0] < widths[1] < widths[2]  # the three differ, so a wrong width shows


@pytest.mark.parametrize("count", [1, 2])  # one image: a calibration row of one
def test_zero_std_is_each_images_share_of_pixels_whose_k_draws_agree(tmp_path, evaluated, count):
    """DDNM on noiseless inpainting puts every observed pixel at its measured value in each of the K draws:
    std 0 there, so zero_std is the observed share of the mask (round-off may split a few pixels' draws),
    a number per image in its record, and calibration.csv's is their mean."""
    root, _, _ = evaluated
    task = {"name": "inp", "operator": "inp", "sigma_y_pixel": 0.0}
    out, _ = run_evaluation(str(write_config(tmp_path, tasks=[task], methods={"ddnm": {}}, budgets=[2],
                                             metrics={"lpips": None, "fid": None})),
                            str(root / "data"), str(tmp_path / "out"), fid=False, limit=count)
    observed = degradations.make("inp", channels=1, image_size=(32, 32)).rank / 32 ** 2
    shares = [json.loads((out / "inp" / "ddnm" / "nfe002" / f"{i:05d}.json").read_text())["mean"]["zero_std"]
              for i in range(count)]
    assert all(isinstance(share, float) and abs(share - observed) < 0.01 for share in shares), (shares, observed)
    row, = read_csv(out / "calibration.csv")
    assert (int(row["images"]), int(row["nfe"])) == (count, 2)
    assert float(row["zero_std"]) == pytest.approx(np.mean(shares), abs=1e-12)


def test_mean_rows_psnr_and_lpips_are_recomputed_from_the_saved_mean_pngs(evaluated):
    _, out, _ = evaluated
    network = metrics.load_lpips("alex")
    lpips = lambda a, b: float(network(*(torch.from_numpy(x).float()[None].expand(1, 3, -1, -1) * 2 - 1  # noqa: E731
                                         for x in (a, b))))
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["estimate"], int(r["budget"])) for r in rows] == [
        (m, e, b) for m in ("ddrm", "nested") for b in BUDGETS for e in ("sample", "mean")]
    clean = [pixels(out / "clean" / f"{i:05d}.png") for i in range(COUNT)]
    for row in rows:
        suffix = "_mean" if row["estimate"] == "mean" else ""
        images = [pixels(out / "sr4" / row["method"] / f"nfe{int(row['budget']):03d}" / f"{i:05d}{suffix}.png")
                  for i in range(COUNT)]
        with torch.no_grad():
            assert float(row["psnr"]) == pytest.approx(np.mean([numpy_psnr(x, c) for x, c in zip(images, clean)]),
                                                        rel=1e-6), row
            assert float(row["lpips"]) == pytest.approx(np.mean([lpips(x, c) for x, c in zip(images, clean)]),
                                                         rel=1e-4, abs=1e-6), row
        if row["estimate"] == "mean":  # no FID / KID / consistency for a mean: empty, never a number
            assert all(math.isnan(float(row[key])) for key in ("fid", "kid", "to_final_mse", "to_final_lpips"))
    per_image = read_csv(out / "per_image.csv")  # each image's sample row, then its mean row
    assert [(r["method"], int(r["budget"]), int(r["index"]), r["estimate"]) for r in per_image] == [
        (m, b, i, e) for m in ("ddrm", "nested") for b in BUDGETS for i in range(COUNT) for e in ("sample", "mean")]
    for row in per_image:
        name = f"{int(row['index']):05d}{'_mean' if row['estimate'] == 'mean' else ''}.png"
        image = pixels(out / "sr4" / row["method"] / f"nfe{int(row['budget']):03d}" / name)
        clean = pixels(out / "clean" / f"{int(row['index']):05d}.png")
        assert (row["task"], row["source"], row["nfe"]) == ("sr4", f"d{row['index']}.png", row["budget"]), row
        assert float(row["psnr"]) == pytest.approx(numpy_psnr(image, clean), rel=1e-6), row
        with torch.no_grad():
            assert float(row["lpips"]) == pytest.approx(lpips(image, clean), rel=1e-4, abs=1e-6), row


def test_the_report_says_which_rows_are_samples_and_which_are_means(evaluated):
    _, out, report = evaluated
    table = (out / "table.md").read_text()
    assert f"| sr4 | nested | sample 1 of {K} |" in table and f"| sr4 | nested | mean of {K} |" in table
    fid = table.split("## FID")[1].split("## KID")[0]
    assert "sample 1 of" in fid and "mean of" not in fid  # no FID row for a mean
    assert "## Calibration" in table and "68.3 / 95.4 / 99.7" in table
    assert f"| exact Gaussian posterior, K = {K} | | | " + " | ".join(
        f"{100 * v:.1f}" for v in metrics.exact_coverage(K)) + " | |" in table
    assert "comparable" in table and "std 0" in table and "no FID" in table
    calibration = read_csv(out / "calibration.csv")
    for row in calibration:  # the table's percentages are calibration.csv's fractions
        cells = f"| sr4 | {row['method']} | {row['nfe']} | " + " | ".join(
            f"{100 * float(row[key]):.1f}" for key in ("within_1std", "within_2std", "within_3std", "zero_std"))
        assert cells in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["samples"]["K"] == K and len(saved["calibration"]) == len(calibration) == 2 * len(BUDGETS)
    assert report["calibration"][0]["within_1std"] == pytest.approx(float(calibration[0]["within_1std"]))


def test_one_sample_reports_samples_only_and_keeps_its_keys(tmp_path, evaluated):
    """K = 1: no mean rows, no calibration.csv; every row named a sample."""
    root, _, _ = evaluated
    out, _ = run_evaluation(str(write_config(tmp_path, samples=1, methods={"ddrm": {}}, budgets=[2])),
                            str(root / "data"), str(tmp_path / "out"), fid=False)
    rows = read_csv(out / "results.csv")
    assert [r["estimate"] for r in rows] == ["sample"]
    assert not (out / "calibration.csv").exists() and "## Calibration" not in (out / "table.md").read_text()
    table = (out / "table.md").read_text()
    assert "every row is a posterior sample" in table and "| sr4 | ddrm | sample | " in table
    assert "| sample 1 of" not in table and "| mean of" not in table
    # K = 1 is no setting: a folder evaluated before `samples` existed keeps its fingerprint
    assert "samples" not in json.loads((out / "evaluation.json").read_text())["settings"]
    assert not list((out / "sr4" / "ddrm" / "nfe002").glob("*_mean.png"))


# ------------------------------------------------------------------ keys, resuming, refusals, memory

def test_another_k_is_refused_and_with_overwrite_recomputes_everything(tmp_path, evaluated, capsys):
    from ipsolve.cli import main

    root, _, _ = evaluated
    args = ["eval", "--data", str(root / "data"), "--out", str(tmp_path / "out"), "--no-fid"]
    small = dict(methods={"ddrm": {}}, budgets=[2], metrics={"lpips": None, "fid": None})
    assert main([*args, "--config", str(write_config(tmp_path, **small))]) == 0
    assert f"{COUNT} computed" in capsys.readouterr().out
    assert main([*args, "--config", str(write_config(tmp_path, **small))]) == 0
    assert f"0 computed (0 replacing results of other settings), {COUNT} reused" in capsys.readouterr().out
    (tmp_path / "out" / "sr4" / "ddrm" / "nfe002" / "00001_mean.png").unlink()  # a missing mean is recomputed
    assert main([*args, "--config", str(write_config(tmp_path, **small))]) == 0
    assert f"1 computed (0 replacing results of other settings), {COUNT - 1} reused" in capsys.readouterr().out
    assert main([*args, "--config", str(write_config(tmp_path, **small, samples=K + 1))]) == 2
    assert f"samples is {K} there, {K + 1} here" in capsys.readouterr().err
    assert main([*args, "--config", str(write_config(tmp_path, **small, samples=1))]) == 2
    assert f"samples is {K} there, 1 here" in capsys.readouterr().err
    assert main([*args, "--config", str(write_config(tmp_path, **small, samples=1)), "--overwrite"]) == 0
    assert f"{COUNT} computed" in capsys.readouterr().out
    assert main([*args, "--config", str(write_config(tmp_path, **small, samples=1))]) == 0  # no mean needed
    assert f"0 computed (0 replacing results of other settings), {COUNT} reused" in capsys.readouterr().out
    assert not list((tmp_path / "out" / "sr4" / "ddrm" / "nfe002").glob("*_mean.png"))  # the earlier means went
    assert not (tmp_path / "out" / "calibration.csv").exists()


def test_with_two_samples_a_missing_mean_is_recomputed(tmp_path, evaluated, capsys):
    from ipsolve.cli import main

    root, _, _ = evaluated
    config = write_config(tmp_path, samples=2, methods={"ddrm": {}}, budgets=[2], metrics={"lpips": None, "fid": None})
    args = ["eval", "--config", str(config), "--data", str(root / "data"), "--out", str(tmp_path / "out"), "--no-fid",
            "--limit", "1"]
    assert main(args) == 0 and "1 computed" in capsys.readouterr().out
    (tmp_path / "out" / "sr4" / "ddrm" / "nfe002" / "00000_mean.png").unlink()
    assert main(args) == 0
    assert "1 computed (0 replacing results of other settings), 0 reused" in capsys.readouterr().out
    assert [r["estimate"] for r in read_csv(tmp_path / "out" / "per_image.csv")] == ["sample", "mean"]
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["settings"]["samples"] == 2


def test_the_eval_memory_estimate_counts_batch_size_times_k_rows(tmp_path, evaluated, monkeypatch):
    import ipsolve.resources as resources

    root, _, _ = evaluated
    monkeypatch.setattr(resources, "available_bytes", lambda device: int(6.5 / resources.USABLE_FRACTION))
    monkeypatch.setattr(resources, "estimate_bytes", lambda model, image_shape, rows: rows)  # 6 rows fit, 8 do not
    plan = plan_eval(str(write_config(tmp_path, samples=3)), str(root / "data"), str(tmp_path / "out"))
    distributed.stop(plan.workers)
    for changes in (dict(samples=4), dict(samples=1, batch_size=8)):
        with pytest.raises(ValueError, match="a batch of 8 "):
            plan_eval(str(write_config(tmp_path, **changes)), str(root / "data"), str(tmp_path / "out"))
    plan = plan_eval(str(write_config(tmp_path, samples=4)), str(root / "data"), str(tmp_path / "out"), force=True)
    distributed.stop(plan.workers)
    assert not (tmp_path / "out").exists()
