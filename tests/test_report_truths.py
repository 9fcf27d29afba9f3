"""The eval report's aggregation against numbers computed here: per (task, method, budget) the means of the
per-image records, FID and KID of that set's images against clean/ (scipy's matrix square root and the
unbiased MMD² written out), and the log-FID AUC by the trapezoid rule.

The Inception network is replaced by three hand-made features of each saved image (its mean, its spread
and its first pixel), so the sets are small and the closed forms exact; test_metric_truths.py checks
the same wiring end to end with the real network.
"""
import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from ipsolve import metrics
from ipsolve.config import EvalConfig, MethodConfig, TaskConfig
from ipsolve.imageio import load_image, save_image
from ipsolve.services import eval_report
from ipsolve.services.evaluation import OutputLayout

TASKS = (TaskConfig(name="sr4", operator="sr4"), TaskConfig(name="deno", operator="deno", sigma_y_pixel=0.1))
METHODS = (MethodConfig(name="ddrm"), MethodConfig(name="nested", nested=True, splits={2: (2, 1), 4: (4, 1)}))
BUDGETS = (2, 4)
COUNT = 4


def features_of(paths):
    """(N, 3): mean, standard deviation and first pixel of each image file."""
    rows = []
    for path in paths:
        image = load_image(path).double()
        rows.append([image.mean().item(), image.std().item(), image.flatten()[0].item()])
    return np.array(rows)


CALLS = []
SCALE = {"clean": 1.0, "legacy_pytorch": 1.5}  # the two resizings give different features


class FakeInception:
    def __init__(self, weights=None, device="cpu"):
        CALLS.append(("network", device))


def fake_image_features(paths, extractor, mode="clean", batch_size=32, device="cpu"):
    """features_of, scaled by the FID mode; records (mode, device) and checks the extractor and mode."""
    assert isinstance(extractor, FakeInception)
    if mode not in SCALE:
        raise ValueError(f"unknown FID mode {mode!r}")
    CALLS.append(("features", mode, device))
    return SCALE[mode] * features_of(paths)


def fid_by_sqrtm(f, g):
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    return float(np.sum((f.mean(0) - g.mean(0)) ** 2) + np.trace(cov_f + cov_g)
                 - 2 * np.trace(linalg.sqrtm(cov_f @ cov_g)).real)


def kid_by_hand(f, g):
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³ over all N = M images (every subset is the whole set)."""
    n, d = len(f), f.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    off = lambda m: (m.sum() - np.trace(m)) / (n * (n - 1))  # noqa: E731
    return float(off(k(f, f)) + off(k(g, g)) - 2 * k(f, g).mean())


@pytest.fixture
def report_inputs(tmp_path, monkeypatch):
    """clean/ and one folder per (task, method, budget) of distinct random images, with their records."""
    monkeypatch.setattr(metrics, "InceptionFeatures", FakeInception)
    monkeypatch.setattr(metrics, "image_features", fake_image_features)
    CALLS.clear()
    layout = OutputLayout(tmp_path)
    g = torch.Generator().manual_seed(0)
    for i in range(COUNT):
        save_image(torch.rand(1, 6, 6, generator=g), layout.clean(i))
    records, group = [], 0
    for task in TASKS:
        for method in METHODS:
            for budget in BUDGETS:
                group += 1
                for i in range(COUNT):
                    # images drift from clean/ by a different amount in every group
                    save_image(torch.rand(1, 6, 6, generator=g) * (0.5 + 0.1 * group), layout.output(
                        task.name, method.name, budget, i))
                    record = {"task": task.name, "method": method.name, "budget": budget, "index": i,
                              "nfe": budget + (method.name == "ddrm"), "psnr": 10.0 * group + i,
                              "lpips": 0.01 * group + 0.001 * i,
                              "to_final": {"mse": 0.001 * group, "lpips": 0.002 * i} if method.nested else None,
                              "x0_to_final": {"2": {"mse": 0.003 * group + i, "lpips": 0.0}} if budget == 4 else {}}
                    layout.record(task.name, method.name, budget, i).write_text(json.dumps(record))
                    records.append(record)
    config = EvalConfig(model="test", tasks=TASKS, budgets=BUDGETS, methods=METHODS, fid_mode="clean")
    return config, layout, records


def test_rows_are_the_means_and_the_fid_kid_of_each_set_against_clean(report_inputs):
    config, layout, records = report_inputs
    rows = eval_report.summarise(config, layout, eval_report.read_records(config, layout, COUNT), "cpu")
    clean = features_of([layout.clean(i) for i in range(COUNT)])
    assert [(r["task"], r["method"], r["budget"]) for r in rows] == [
        (t.name, m.name, b) for t in TASKS for m in METHODS for b in BUDGETS]
    for group, row in enumerate(rows, start=1):
        outputs = features_of([layout.output(row["task"], row["method"], row["budget"], i) for i in range(COUNT)])
        assert row["images"] == COUNT and row["nfe"] == row["budget"] + (row["method"] == "ddrm")
        assert row["psnr"] == pytest.approx(10.0 * group + 1.5) and row["lpips"] == pytest.approx(0.01 * group + 0.0015)
        assert row["fid"] == pytest.approx(fid_by_sqrtm(outputs, clean), rel=1e-7)
        assert row["kid"] == pytest.approx(kid_by_hand(outputs, clean), rel=1e-7)
    assert len({round(r["fid"], 6) for r in rows}) == len(rows)  # every set differs


def test_log_fid_auc_is_the_trapezoid_over_each_methods_nfe(report_inputs):
    config, layout, records = report_inputs
    rows = eval_report.summarise(config, layout, records, "cpu")
    aucs = eval_report.log_fid_aucs(rows)
    for task in TASKS:
        for method in METHODS:
            (n0, f0), (n1, f1) = sorted((r["nfe"], r["fid"]) for r in rows
                                        if (r["task"], r["method"]) == (task.name, method.name))
            assert aucs[task.name][method.name] == pytest.approx((n1 - n0) * (math.log(f0) + math.log(f1)) / 2)


def test_fid_is_off_without_a_mode_or_with_one_image(report_inputs):
    config, layout, records = report_inputs
    for changed, kept in ((EvalConfig(**{**config.__dict__, "fid_mode": None}), records),
                          (config, [r for r in records if r["index"] == 0])):
        rows = eval_report.summarise(changed, layout, kept, "cpu")
        assert all(math.isnan(r["fid"]) and math.isnan(r["kid"]) for r in rows)
        assert all(not math.isnan(r["psnr"]) for r in rows)
        assert all(math.isnan(v) for methods in eval_report.log_fid_aucs(rows).values() for v in methods.values())


def test_read_records_in_order_and_missing_ones_named(report_inputs):
    config, layout, records = report_inputs
    assert eval_report.read_records(config, layout, COUNT) == records
    missing = layout.record("deno", "nested", 4, 2)
    missing.unlink()
    with pytest.raises(ValueError, match=f"{missing} is missing"):
        eval_report.read_records(config, layout, COUNT)


def test_the_configured_mode_and_device_reach_the_feature_extraction(report_inputs):
    config, layout, records = report_inputs
    legacy = EvalConfig(**{**config.__dict__, "fid_mode": "legacy_pytorch"})
    rows = eval_report.summarise(legacy, layout, records, "cpu")
    assert CALLS[0] == ("network", "cpu") and len(CALLS) == 1 + 1 + len(rows)
    assert all(call == ("features", "legacy_pytorch", "cpu") for call in CALLS[1:])
    clean = 1.5 * features_of([layout.clean(i) for i in range(COUNT)])
    outputs = 1.5 * features_of([layout.output("sr4", "ddrm", 2, i) for i in range(COUNT)])
    assert rows[0]["fid"] == pytest.approx(fid_by_sqrtm(outputs, clean), rel=1e-7)


def test_two_images_are_enough_for_fid(report_inputs):
    """Two images a set: FID is computed (the pair formula of test_metric_truths.py)."""
    config, layout, records = report_inputs
    rows = eval_report.summarise(config, layout, [r for r in records if r["index"] < 2], "cpu")
    clean = features_of([layout.clean(i) for i in range(2)])
    outputs = features_of([layout.output("sr4", "ddrm", 2, i) for i in range(2)])
    p, q = (outputs[0] - outputs[1]) / np.sqrt(2), (clean[0] - clean[1]) / np.sqrt(2)
    expected = np.sum((outputs.mean(0) - clean.mean(0)) ** 2) + p @ p + q @ q - 2 * abs(p @ q)
    assert rows[0]["images"] == 2 and rows[0]["fid"] == pytest.approx(expected, rel=1e-7)
