"""`ipsolve eval` on small data with the exact Gaussian prior: configs, outputs, seeds, resuming, FID."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.cli import main
from ipsolve.config import CONFIGS, load_eval_config
from ipsolve.imageio import save_image
from ipsolve.services.evaluation import evaluate, fit_image, list_images, plan_runs



@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Four held-out MNIST digits as PNG files (named so that sorting reverses their order)."""
    folder = tmp_path_factory.mktemp("digits")
    images = torch.load(Path(__file__).parent / "data" / "mnist_heldout16.pt", weights_only=True)["images"]
    for i in range(4):
        save_image(images[i].float() / 255, folder / f"digit_{9 - i}.png")
    return folder


def write_config(folder: Path, **changes) -> Path:
    config = {"model": "gaussian:1x32x32", "seed": 3, "batch_size": 2,
              "tasks": ["deno", "sr4", {"name": "inp30", "operator": "inp", "sigma_y_pixel": 0.05}],
              "budgets": [2, 4], "methods": {"ddrm": {}, "nested": {"inner_steps": 2}},
              "metrics": {"lpips": "alex", "fid": None}}
    config.update(changes)
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    path = folder / "eval" / "small.yml"
    path.write_text(yaml.safe_dump(config))
    (folder / "tasks").mkdir(exist_ok=True)
    for name in ("deno", "sr4"):
        (folder / "tasks" / f"{name}.yml").write_text((CONFIGS / "tasks" / f"{name}.yml").read_text())
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def assert_same_rows(rows, expected):
    """Same rows and keys; numbers equal up to float rounding (batch composition changes the last bits)."""
    assert [list(r) for r in rows] == [list(r) for r in expected]
    for row, other in zip(rows, expected):
        for key in ("psnr", "lpips"):
            assert float(row[key]) == pytest.approx(float(other[key]), rel=1e-5, abs=1e-6)
        assert {k: v for k, v in row.items() if k not in ("psnr", "lpips")} == \
            {k: v for k, v in other.items() if k not in ("psnr", "lpips")}


def test_paper_config_reads_four_tasks_with_both_noise_units():
    config = load_eval_config(CONFIGS / "eval" / "celeba_table2.yml")
    assert [t.name for t in config.tasks] == ["deno", "sr16", "color", "inp"]
    assert config.budgets == (10, 20, 30) and [m.name for m in config.methods] == ["ddrm", "nested"]
    deno = config.tasks[0]
    assert deno.sigma_y_model == 2 * deno.sigma_y_pixel
    nested = config.methods[1]
    assert nested.splits == {10: (3, 10), 20: (3, 10), 30: (3, 10)}
    runs = plan_runs(config)
    assert len(runs) == 4 * (3 + 1)        # vanilla: a run per budget; nested: one anytime run per task
    smoke = load_eval_config(CONFIGS / "eval" / "embedded_smoke.yml")
    assert smoke.model == "embedded" and [t.name for t in smoke.tasks] == ["deno", "sr4", "inp"]


def test_config_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"methods.nested.inner_steps: budgets\[0\], 2 NFE, is no whole number of inner runs of 3"):
        load_eval_config(write_config(tmp_path, methods={"nested": {"inner_steps": 3}}))
    with pytest.raises(ValueError, match="small.yml: budget is not a key here: the allowed keys are model, tasks"):
        load_eval_config(write_config(tmp_path, budget=[2]))
    with pytest.raises(ValueError, match="methods.ddpm names no solver"):
        load_eval_config(write_config(tmp_path, methods={"ddpm": {}}))


def test_images_are_sorted_limited_and_fitted(digits):
    names = [p.name for p in list_images(digits, limit=3)]
    assert names == ["digit_6.png", "digit_7.png", "digit_8.png"]
    wide = torch.rand(3, 40, 80)
    fitted = fit_image(wide, (32, 32))
    assert fitted.shape == (3, 32, 32)
    # scaled to 32 × 64 then center-cropped: the middle columns of the downscaled image
    expected = torch.nn.functional.interpolate(wide[None], size=(32, 64), mode="bicubic", antialias=True)[0]
    assert torch.allclose(fitted, expected.clamp(0, 1)[:, :, 16:48])


def test_eval_writes_tables_plot_and_metadata_and_resumes(tmp_path, digits):
    config = load_eval_config(write_config(tmp_path))
    out = tmp_path / "out"
    report = evaluate(config, digits, out)
    assert report["computed"] == 3 * (2 + 1) * 4 and report["reused"] == 0
    for name in ("per_image.csv", "results.csv", "table.md", "curves.png", "results.json"):
        assert (out / name).is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_image = read_rows(out / "per_image.csv")
    assert len(per_image) == 3 * 2 * 2 * 4
    results = read_rows(out / "results.csv")
    first = results[0]
    same = [float(r["psnr"]) for r in per_image if (r["task"], r["method"], r["budget"]) == ("deno", "ddrm", "2")]
    assert float(first["psnr"]) == pytest.approx(sum(same) / 4)
    meta = json.loads((out / "results.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["noise_units"]["inp30"] == {"sigma_y_pixel": 0.05, "sigma_y_model": 0.1}
    assert meta["seeds"]["seed"] == 3 and meta["metrics"]["lpips"]["net"] == "alex"
    assert meta["metrics"]["fid"] is None
    assert "| deno | nested |" in (out / "table.md").read_text()

    record = json.loads((out / "sr4" / "nested" / "nfe004" / "00001.json").read_text())
    assert record["source"] == "digit_7.png" and record["nfe"] == 4 and record["seed"] == 3 * 1_000_003 + 1

    again = evaluate(config, digits, out)
    assert again["computed"] == 0 and read_rows(out / "per_image.csv") == per_image

    removed = out / "sr4" / "ddrm" / "nfe004" / "00002.png"
    kept = out / "sr4" / "ddrm" / "nfe004" / "00001.png"
    kept_mtime = kept.stat().st_mtime_ns
    removed.unlink()
    third = evaluate(config, digits, out)
    assert third["computed"] == 1 and removed.is_file() and kept.stat().st_mtime_ns == kept_mtime
    assert read_rows(out / "per_image.csv") == per_image  # its batch is recomputed whole: the same numbers


def test_results_do_not_depend_on_batch_size(tmp_path, digits):
    config = load_eval_config(write_config(tmp_path, tasks=["sr4"], methods={"nested": {"inner_steps": 2}}))
    evaluate(config, digits, tmp_path / "batched", batch_size=3)
    evaluate(config, digits, tmp_path / "single", batch_size=1)
    batched, single = read_rows(tmp_path / "batched" / "per_image.csv"), read_rows(tmp_path / "single" / "per_image.csv")
    assert_same_rows(batched, single)


def test_fid_kid_and_log_fid_auc_per_budget(tmp_path, digits):
    config = load_eval_config(write_config(tmp_path, tasks=["sr4"], methods={"ddrm": {}},
                                           metrics={"lpips": None, "fid": "clean"}))
    report = evaluate(config, digits, tmp_path / "out", limit=2)
    rows = read_rows(tmp_path / "out" / "results.csv")
    fids = [float(r["fid"]) for r in rows]
    assert all(f > 0 and math.isfinite(f) for f in fids) and all(math.isnan(float(r["lpips"])) for r in rows)
    assert report["metrics"]["fid"]["mode"] == "clean"
    expected_auc = (4 - 2) * (math.log(fids[0]) + math.log(fids[1])) / 2
    assert report["log_fid_auc"]["sr4"]["ddrm"] == pytest.approx(expected_auc)


def test_command_line_runs_eval(tmp_path, digits, capsys):
    config = write_config(tmp_path, tasks=["deno"], budgets=[2], methods={"ddrm": {}})
    code = main(["eval", "--config", str(config), "--data", str(digits), "--limit", "2",
                 "--out", str(tmp_path / "out"), "--no-fid"])
    assert code == 0 and "2 images" in capsys.readouterr().out
    assert main(["eval", "--config", str(config), "--data", str(tmp_path / "nowhere")]) == 2


def test_methods_are_solver_and_plain_or_nested_pairs(tmp_path, digits):
    methods = {"ddnm": {}, "nested_pigdm": {"solver": "pigdm", "inner_steps": 2, "eta": 0.5},
               "dps": {"step_size": 0.5}, "nested": {"inner_steps": 2}}
    config = load_eval_config(write_config(tmp_path, tasks=["sr4"], methods=methods))
    by_name = {m.name: m for m in config.methods}
    assert (by_name["ddnm"].solver, by_name["ddnm"].nested, by_name["ddnm"].options) == ("ddnm", False, {"eta": 0.85})
    assert (by_name["nested_pigdm"].solver, by_name["nested_pigdm"].nested) == ("pigdm", True)
    assert by_name["nested_pigdm"].options == {"eta": 0.5, "weight": "code"}
    assert by_name["dps"].options == {"step_size": 0.5, "clip_x0": True, "step_schedule": "constant"}
    assert (by_name["nested"].solver, by_name["nested"].nested) == ("ddrm", True)
    with pytest.raises(ValueError, match="methods.ddnm.eta_b is not a key here: the allowed keys are solver, nested, eta$"):
        load_eval_config(write_config(tmp_path, methods={"ddnm": {"eta_b": 1.0}}))
    with pytest.raises(ValueError, match="methods.pigdm.weight must be one of code, paper, score, got 'papers'"):
        load_eval_config(write_config(tmp_path, methods={"pigdm": {"weight": "papers"}}))
    paper = load_eval_config(write_config(tmp_path, methods={"pigdm": {"weight": "paper"}}))
    assert paper.methods[0].options == {"eta": 1.0, "weight": "paper"}
    report = evaluate(config, digits, tmp_path / "out", limit=2)
    assert report["computed"] == 2 * 2 + 2 * 2 + 2 + 2  # images × runs: plain, one per budget; nested, one
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert {r["method"] for r in rows} == set(methods) and all(math.isfinite(float(r["psnr"])) for r in rows)


def test_anytime_consistency_against_a_direct_computation(tmp_path, digits):
    """results.csv's distance to the final, recomputed here from the solvers with the images' own draws."""
    import degradations
    import solvers
    from ipsolve.distributed import image_generator, per_image_noise
    from ipsolve.services.evaluation import load_clean
    from ipsolve.models import load_model

    config = load_eval_config(write_config(tmp_path, tasks=["sr4"], budgets=[2, 4], seed=3,
                                           methods={"ddrm": {}, "nested": {"inner_steps": 2}},
                                           metrics={"lpips": None, "fid": None}))
    evaluate(config, digits, tmp_path / "out", limit=2)
    rows = {(r["method"], r["budget"]): r for r in read_rows(tmp_path / "out" / "results.csv")}

    model, op = load_model("gaussian:1x32x32"), degradations.make("sr4", channels=1, image_size=(32, 32))
    clean = torch.stack([load_clean(p, (1, 32, 32)) for p in list_images(digits, 2)])
    sigma = config.tasks[0].sigma_y_model

    def measured():
        noise = per_image_noise([image_generator(3, i) for i in range(2)])
        return noise, op.H(2 * clean - 1) + sigma * noise((2, *op.measurement_shape))

    noise, y = measured()
    previews = [p.x0 for p in solvers.nested(model, inner="ddrm", outer_steps=2, inner_steps=2, noise=noise, y=y,
                                             op=op, sigma_y=sigma)]
    noise, y = measured()
    seen = {}
    final = solvers.ddrm(model, y, op, sigma, solvers.ddrm_timesteps(4), noise=noise,
                         callback=lambda info: seen.setdefault(info["nfe"], info["x0"]))
    shown = lambda x: (((x + 1) / 2).clamp(0, 1).float() * 255).round() / 255  # noqa: E731 (as saved: 8-bit)
    mse = lambda a, b: ((shown(a) - shown(b)) ** 2).mean().item()  # noqa: E731 (equal-size images: mean of means)
    assert float(rows[("nested", "2")]["to_final_mse"]) == pytest.approx(mse(previews[0], previews[1]), rel=1e-5)
    assert float(rows[("nested", "4")]["to_final_mse"]) == 0
    assert float(rows[("ddrm", "2")]["to_final_mse"]) == pytest.approx(mse(seen[2], final), rel=1e-5)
    assert float(rows[("ddrm", "2")]["to_final_mse"]) > 10 * float(rows[("nested", "2")]["to_final_mse"]) > 0
    assert "Anytime consistency" in (tmp_path / "out" / "table.md").read_text()


def test_eval_configs_resolve_by_packaged_name_and_relative_to_their_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is looked up relative to the working folder
    smoke = load_eval_config("embedded_smoke")
    assert [t.name for t in smoke.tasks] == ["deno", "sr4", "inp"] and smoke.budgets == (2, 4)
    assert smoke.tasks[0].sigma_y_pixel == yaml.safe_load((CONFIGS / "tasks" / "deno.yml").read_text())["sigma_y_pixel"]
    own = tmp_path / "elsewhere" / "mine.yml"
    own.parent.mkdir()
    (own.parent / "noisy.yml").write_text("operator: deno\nsigma_y_pixel: 0.2\n")
    own.write_text(yaml.safe_dump({"model": "embedded", "tasks": ["noisy.yml", "sr4"], "budgets": [2],
                                   "methods": {"ddrm": {}}}))
    monkeypatch.chdir(CONFIGS)
    config = load_eval_config(own)
    assert [(t.operator, t.sigma_y_pixel) for t in config.tasks] == [("deno", 0.2), ("sr4", 0.0)]
    with pytest.raises(ValueError, match="no eval config named 'nope'.*embedded_smoke"):
        load_eval_config("nope")


@pytest.mark.parametrize("shape", [(3, 37, 32), (3, 32, 45), (1, 32, 35)])  # covering 32×32 already: crop only
def test_fit_image_crops_the_centre_as_torchvision_does(shape):
    from torchvision.transforms.functional import center_crop

    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fit_image(image, (32, 32)), center_crop(image, [32, 32]), rtol=0, atol=0)
