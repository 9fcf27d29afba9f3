"""The services behind `ipsolve degrade` / `ipsolve restore`, and TaskConfig, called in-process.

The CLI tests run `python -m ipsolve` in a subprocess, which cannot see a mutated copy of the code; these
tests call `degrade`, `degrade_file`, `restore_inputs` and `TaskConfig` directly and check them against
numbers computed here: y = H x + σ n with σ in model units (twice the pixel value) and n drawn from
torch.Generator().manual_seed(seed), the defaults (σ = 0, seed 0, colour kept), the sidecar's record,
and the one-line refusals (their text names the option or file that is wrong).
"""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from degradations.inpainting import random_mask
from ipsolve.config import TaskConfig
from ipsolve.degrade import degrade
from ipsolve.imageio import from_model, load_image, save_image, to_model
from ipsolve.measurement import read_measurement
from ipsolve.models import load_model as real_load_model
from ipsolve.services.degrade_file import degrade_file
from ipsolve.services.restore_request import RestoreRequest, restore_inputs

EIGHT_BIT = 1.01 / 255  # a written pixel is within half a level of its value, plus float slack


def generator(seed):
    return torch.Generator().manual_seed(seed)


def quantized(y):
    """A model-space measurement as the 8-bit PNG stores it, read back in [0, 1]."""
    return (from_model(y).clamp(0, 1) * 255).round() / 255


@pytest.fixture
def gray_file(tmp_path):
    save_image(torch.rand(1, 32, 32, generator=generator(0)), tmp_path / "x.png")
    return tmp_path / "x.png"


@pytest.fixture
def mask_file(tmp_path):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :16] = True  # the left half observed: unlike any random mask
    save_image(mask[None].float(), tmp_path / "mask.png")
    return tmp_path / "mask.png", mask


# --- TaskConfig ---------------------------------------------------------------------------------------------

def test_task_config_from_dict_keeps_every_given_value_and_as_dict_returns_them():
    data = {"name": "my-sr", "operator": "sr4", "sigma_y_pixel": 0.25, "params": {"fraction": 0.3}, "seed": 7}
    task = TaskConfig.from_dict(data)
    assert (task.name, task.operator, task.sigma_y_pixel, task.params, task.seed) == \
        ("my-sr", "sr4", 0.25, {"fraction": 0.3}, 7)
    assert task.as_dict() == {"name": "my-sr", "operator": "sr4", "params": {"fraction": 0.3}, "seed": 7,
                              "sigma_y_pixel": 0.25, "sigma_y_model": 0.5}
    assert TaskConfig.from_dict({k: v for k, v in task.as_dict().items() if k != "sigma_y_model"}) == task


def test_task_config_defaults_name_operator_no_noise_seed_zero_no_params():
    task = TaskConfig.from_dict({"operator": "deno"})
    assert (task.name, task.operator, task.sigma_y_pixel, task.params, task.seed) == ("deno", "deno", 0.0, {}, 0)
    assert TaskConfig.from_dict({"operator": "sr4", "params": None}).params == {}


def test_task_config_errors_name_where_they_come_from():
    with pytest.raises(ValueError, match=r"^colour is not a key here: the allowed keys are operator, name"):
        TaskConfig.from_dict({"operator": "sr4", "colour": 1})
    with pytest.raises(ValueError, match=r"^tasks/a\.yml\.colour is not a key here"):
        TaskConfig.from_dict({"operator": "sr4", "colour": 1}, where="tasks/a.yml")


# --- degrade ------------------------------------------------------------------------------------------------

def test_degrade_draws_the_noise_from_seed_zero_by_default():
    x = torch.rand(1, 8, 8, generator=generator(1))
    y, _ = degrade(x, "deno", 0.1)
    expected = (2 * x - 1)[None] + 0.1 * torch.randn(1, 1, 8, 8, generator=generator(0))
    assert torch.allclose(y, expected, atol=1e-6)
    assert not torch.allclose(y, (2 * x - 1)[None] + 0.1 * torch.randn(1, 1, 8, 8, generator=generator(1)))


def test_degrade_draws_float64_noise_for_a_float64_image():
    x = torch.rand(1, 8, 8, generator=generator(1), dtype=torch.float64)
    y, _ = degrade(x, "deno", 0.1, seed=2)
    expected = (2 * x - 1)[None] + 0.1 * torch.randn(1, 1, 8, 8, generator=generator(2), dtype=torch.float64)
    assert y.dtype == torch.float64
    assert torch.allclose(y, expected, atol=1e-12)  # float32 noise differs by about 1e-8


def test_degrade_draws_the_random_inpainting_mask_from_the_seed():
    x = torch.rand(1, 16, 16, generator=generator(1))
    for seed in (0, 4):
        y, op = degrade(x, "inp", 0.0, seed=seed)
        mask = random_mask((16, 16), 0.5, seed)  # inp observes half the pixels, drawn from `seed`
        assert torch.equal(op.mask, mask)
        assert torch.allclose(y[0], (2 * x - 1)[:, mask])  # the observed pixels, in order


# --- degrade_file -------------------------------------------------------------------------------------------

def test_degrade_file_measures_h_x_plus_twice_the_pixel_sigma_and_records_it(gray_file, tmp_path):
    out = tmp_path / "y.png"
    result = degrade_file(gray_file, out, "sr4", 0.05, seed=3)
    assert result.output == out and result.image_shape == (1, 32, 32)
    x = load_image(gray_file)
    hx = (2 * x - 1).reshape(1, 8, 4, 8, 4).mean(dim=(2, 4))[None]  # sr4: 4x4 block averages
    expected = quantized(hx + 0.1 * torch.randn(1, 1, 8, 8, generator=generator(3))[0])[0]
    assert (load_image(out) - expected).abs().max() <= EIGHT_BIT
    sidecar = json.loads((tmp_path / "y.png.json").read_text())
    assert sidecar["operator"]["name"] == "sr4" and sidecar["sigma_y"] == {"model": 0.1, "pixel": 0.05}
    assert "mask" not in sidecar


def test_degrade_file_defaults_to_no_noise_and_seed_zero(gray_file, tmp_path):
    x = load_image(gray_file)
    degrade_file(gray_file, tmp_path / "clean.png", "deno")
    assert json.loads((tmp_path / "clean.png.json").read_text())["sigma_y"] == {"model": 0.0, "pixel": 0.0}
    assert torch.equal(load_image(tmp_path / "clean.png"), x)  # H = I, no noise: the same 8-bit pixels
    degrade_file(gray_file, tmp_path / "noisy.png", "deno", 0.05)
    noisy = load_image(tmp_path / "noisy.png")
    for seed, close in ((0, True), (1, False)):
        expected = quantized((2 * x - 1) + 0.1 * torch.randn(1, 32, 32, generator=generator(seed)))
        assert ((noisy - expected).abs().max() <= EIGHT_BIT) == close, seed


def test_degrade_file_keeps_colour_unless_gray_and_then_uses_the_luminance(tmp_path):
    rgb = torch.rand(3, 16, 16, generator=generator(5))
    save_image(rgb, tmp_path / "rgb.png")
    assert degrade_file(tmp_path / "rgb.png", tmp_path / "c.png", "deno").image_shape == (3, 16, 16)
    assert torch.equal(load_image(tmp_path / "c.png"), load_image(tmp_path / "rgb.png"))
    assert degrade_file(tmp_path / "rgb.png", tmp_path / "g.png", "deno", gray=True).image_shape == (1, 16, 16)
    with Image.open(tmp_path / "rgb.png") as image:
        luminance = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
    assert torch.equal(load_image(tmp_path / "g.png"), luminance.reshape(1, 16, 16) / 255)


def test_degrade_file_resizes_to_the_given_size_first(gray_file, tmp_path):
    result = degrade_file(gray_file, tmp_path / "y.png", "deno", size=(16, 16))
    assert result.image_shape == (1, 16, 16) and result.op.input_shape == (1, 16, 16)
    small = F.interpolate(load_image(gray_file)[None], size=(16, 16), mode="bicubic", antialias=True,
                          align_corners=False)[0].clamp(0, 1)
    assert (load_image(tmp_path / "y.png") - small).abs().max() <= EIGHT_BIT


def test_degrade_file_inpaints_with_the_given_mask(gray_file, mask_file, tmp_path):
    path, mask = mask_file
    for task in ("inp", "inp_mask", "deno+inp_mask"):
        out = tmp_path / f"{task}.png"
        degrade_file(gray_file, out, task, seed=2, mask=path)
        assert torch.equal(load_image(tmp_path / f"{task}.mask.png")[0] == 1, mask), task
        sidecar = json.loads((tmp_path / f"{task}.png.json").read_text())
        assert sidecar["mask"] == f"{task}.mask.png" and sidecar["sigma_y"] == {"model": 0.0, "pixel": 0.0}
        written = load_image(out)
        assert torch.equal(written[:, mask], load_image(gray_file)[:, mask]), task
        assert torch.equal(written[:, ~mask], torch.zeros_like(written[:, ~mask])), task
        assert torch.equal(read_measurement(out).op.mask if task != "deno+inp_mask"
                           else read_measurement(out).op.parts[-1].mask, mask), task


def test_degrade_file_refusals_name_the_file_or_option(gray_file, mask_file, tmp_path):
    path, _ = mask_file
    out = tmp_path / "y.png"
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: no such image file$"):
        degrade_file(missing, out, "deno")
    with pytest.raises(FileNotFoundError, match=f"^{missing}: no such mask file$"):
        degrade_file(gray_file, out, "inp", mask=missing)
    with pytest.raises(ValueError, match=r"^--mask is for inpainting \(inp\), not 'sr4'$"):
        degrade_file(gray_file, out, "sr4", mask=path)
    with pytest.raises(ValueError, match=r"^--mask is for inpainting \(inp\), not 'inp\+deno'$"):
        degrade_file(gray_file, out, "inp+deno", mask=path)
    for task in ("inp_mask", "deno+inp_mask"):
        with pytest.raises(ValueError, match=r"^--task inp_mask needs --mask PNG \(white = observed"):
            degrade_file(gray_file, out, task)
    assert not out.exists()


# --- restore_inputs -----------------------------------------------------------------------------------------

def recording_loader(calls):
    def load(name, device):
        calls.append((name, device))
        return real_load_model(name, "cpu")
    return load


def test_restore_inputs_loads_the_measurement_in_model_units_on_the_requested_device(tmp_path):
    calls = []
    inputs = restore_inputs(RestoreRequest(measurement="example:sr4", out=str(tmp_path / "run"), device="meta"),
                            load_model=recording_loader(calls))
    assert calls == [("embedded", torch.device("meta"))]
    assert inputs.device == torch.device("meta") and inputs.measurement.y.device.type == "meta"
    assert inputs.mask_file is None and inputs.marks == [5, 10, 15, 20]  # 4 outer x 5 inner
    assert tuple(inputs.measurement.y.shape) == (1, 1, 8, 8)


def test_restore_inputs_reads_a_plain_image_with_the_given_mask_and_pixel_sigma(gray_file, mask_file, tmp_path):
    path, mask = mask_file
    request = RestoreRequest(measurement=str(gray_file), task="inp", sigma_y=0.05, mask=str(path),
                             out=str(tmp_path / "run"), device="cpu")
    inputs = restore_inputs(request, load_model=recording_loader([]))
    assert inputs.mask_file == str(path) and torch.equal(inputs.measurement.op.mask, mask)
    assert inputs.measurement.sigma_y == pytest.approx(0.1)  # model units
    x = to_model(load_image(gray_file))
    assert torch.allclose(inputs.measurement.y.reshape(-1), x[:, mask].reshape(-1))


def test_restore_inputs_marks_follow_the_budget(tmp_path):
    request = RestoreRequest(measurement="example:sr4", out=str(tmp_path / "run"), device="cpu", budget=12)
    inputs = restore_inputs(request, load_model=recording_loader([]))
    assert inputs.marks == [6, 12]  # 12 NFE pay for 2 whole inner runs of 5, shared over them: 6 + 6
    # the shipped sr4 example (8x8 pixels in [0, 1], σ = 0.05 pixel by its sidecar) in model units
    sidecar = json.loads(open(f"{inputs.source}.json").read())
    assert torch.equal(inputs.measurement.y, 2 * load_image(inputs.source)[None] - 1)
    assert inputs.measurement.sigma_y == pytest.approx(2 * sidecar["sigma_y"]["pixel"])


def test_restore_inputs_plans_with_the_given_budget_and_schedule(tmp_path):
    def request(**options):
        return RestoreRequest(measurement="example:sr4", out=str(tmp_path / "run"), device="cpu", outer=1000,
                              inner=1, **options)
    # the paper schedule has outer steps 1…999 only: 1000 outer steps cannot be planned with it, but a
    # budget of 999 NFE runs only 999 of them; the default (matched) schedule plans all 1000
    with pytest.raises(ValueError, match=r"^--outer 1000 with --inner 1 cannot be planned"):
        restore_inputs(request(schedule="paper"), load_model=recording_loader([]))
    assert len(restore_inputs(request(schedule="paper", budget=999), load_model=recording_loader([])).marks) == 999
    assert len(restore_inputs(request(), load_model=recording_loader([])).marks) == 1000


def test_restore_inputs_refuses_before_loading_the_model(tmp_path):
    calls = []
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: no such mask file$"):
        restore_inputs(RestoreRequest(measurement="example:inp", mask=str(missing), out=str(tmp_path / "run")),
                       load_model=recording_loader(calls))
    with pytest.raises(ValueError, match=r"^budget of 3 NFE is smaller than one inner run \(5 NFE\)"):
        restore_inputs(RestoreRequest(measurement="example:sr4", budget=3, out=str(tmp_path / "run")),
                       load_model=recording_loader(calls))
    assert calls == []


def test_restore_inputs_checks_the_fit_of_the_loaded_model_on_its_device(tmp_path, monkeypatch):
    import ipsolve.resources
    import ipsolve.restore

    checked = []
    monkeypatch.setattr(ipsolve.restore, "check_model_fits", lambda *args, **kw: checked.append(("model", args, kw)))
    monkeypatch.setattr(ipsolve.resources, "check_fits", lambda *args, **kw: checked.append(("fits", args, kw)))
    inputs = restore_inputs(RestoreRequest(measurement="example:sr4", out=str(tmp_path / "run"), device="meta",
                                           batch=3, force=True), load_model=recording_loader([]))
    meta = torch.device("meta")
    assert checked == [("model", (inputs.model, (1, 32, 32), meta), {}),
                       ("fits", (inputs.model, (1, 32, 32), 3, meta), {"force": True})]


def test_restore_inputs_force_runs_a_batch_too_large_for_memory(tmp_path):
    def request(force):
        return RestoreRequest(measurement="example:sr4", out=str(tmp_path / "run"), device="cpu", batch=10**9,
                              force=force)
    with pytest.raises(ValueError, match=r"^a batch of 1000000000 1x32x32 images needs about"):
        restore_inputs(request(False), load_model=recording_loader([]))
    assert restore_inputs(request(True), load_model=recording_loader([])).marks == [5, 10, 15, 20]
