"""Measurement files: write/read round trips, plain images without sidecar, errors."""
import json

import pytest
import torch

import degradations
from ipsolve import imageio
from ipsolve.measurement import read_measurement, write_measurement

STEP = 2 / 255  # one 8-bit level in model units


def clean_image(channels, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, channels, height, width, generator=generator) * 1.6 - 0.8


@pytest.mark.parametrize("name, channels, size", [
    ("deno", 3, (8, 12)), ("sr4", 3, (8, 12)), ("color", 3, (8, 12)), ("inp", 3, (8, 12)),
    ("inp_box", 1, (8, 8)), ("deblur_gauss", 3, (8, 12)), ("sr_bicubic2", 1, (8, 12)),
])
def test_round_trip(tmp_path, name, channels, size):
    op = degradations.make(name, channels=channels, image_size=size, seed=3)
    y = op.H(clean_image(channels, *size))
    write_measurement(tmp_path / "y.png", y, op, sigma_y=0.1)
    measurement = read_measurement(tmp_path / "y.png")
    assert measurement.op.spec() == op.spec()
    assert measurement.sigma_y == pytest.approx(0.1)
    assert measurement.y.shape == y.shape
    torch.testing.assert_close(measurement.y, y, rtol=0, atol=STEP / 2 + 1e-6)
    sidecar = json.loads((tmp_path / "y.png.json").read_text())
    assert sidecar["sigma_y"] == {"model": 0.1, "pixel": 0.05}
    assert sidecar["operator"] == op.spec()


def test_image_shapes_on_disk(tmp_path):
    x = clean_image(3, 8, 12)
    for name, shape in [("sr4", (3, 2, 3)), ("color", (1, 8, 12)), ("inp", (3, 8, 12))]:
        op = degradations.make(name, image_size=(8, 12))
        write_measurement(tmp_path / f"{name}.png", op.H(x), op, sigma_y=0.0)
        assert imageio.load_image(tmp_path / f"{name}.png").shape == shape


def test_inpainting_writes_zeros_and_mask(tmp_path):
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    op = degradations.Inpainting(mask=mask, channels=3)
    x = clean_image(3, 6, 6)
    write_measurement(tmp_path / "y.png", op.H(x), op, sigma_y=0.0)
    image = imageio.load_image(tmp_path / "y.png")
    assert (image[:, ~mask] == 0).all()
    torch.testing.assert_close(imageio.load_image(tmp_path / "y.mask.png")[0] > 0.5, mask)
    assert json.loads((tmp_path / "y.png.json").read_text())["mask"] == "y.mask.png"
    measurement = read_measurement(tmp_path / "y.png")
    torch.testing.assert_close(measurement.op.mask, mask)
    torch.testing.assert_close(measurement.y, op.H(x), rtol=0, atol=STEP / 2 + 1e-6)


def test_plain_images_need_a_task_and_infer_the_clean_size(tmp_path):
    small = torch.rand(3, 16, 24)
    imageio.save_image(small, tmp_path / "small.png")
    with pytest.raises(ValueError, match="has no sidecar .*pass task="):
        read_measurement(tmp_path / "small.png")
    measurement = read_measurement(tmp_path / "small.png", task="sr4", sigma_y=0.05)
    assert measurement.op.input_shape == (3, 64, 96) and measurement.sigma_y == 0.05
    torch.testing.assert_close(measurement.y[0], imageio.to_model((small * 255).round() / 255), rtol=0,
                               atol=1e-6)
    assert read_measurement(tmp_path / "small.png", task="deno").op.input_shape == (3, 16, 24)
    with pytest.raises(ValueError, match="not 32x32"):
        read_measurement(tmp_path / "small.png", task="sr4", image_size=(32, 32))
    with pytest.raises(ValueError, match="expects 1x16x24"):
        read_measurement(tmp_path / "small.png", task="color")


def test_plain_gray_image_for_colorization_and_masked_image(tmp_path):
    imageio.save_image(torch.rand(1, 8, 8), tmp_path / "gray.png")
    assert read_measurement(tmp_path / "gray.png", task="color").op.input_shape == (3, 8, 8)
    imageio.save_image(torch.rand(3, 8, 8), tmp_path / "holes.png")
    with pytest.raises(ValueError, match="inpainting needs mask="):
        read_measurement(tmp_path / "holes.png", task="inp")
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :5] = 1
    imageio.save_image(mask, tmp_path / "mask.png")
    measurement = read_measurement(tmp_path / "holes.png", task="inp", mask=tmp_path / "mask.png")
    assert measurement.op.measurement_shape == (3, 40)
    with pytest.raises(ValueError, match="the mask is 8x8 but image_size is 4x4"):
        imageio.save_image(torch.rand(3, 4, 4), tmp_path / "small.png")
        read_measurement(tmp_path / "small.png", task="inp", mask=tmp_path / "mask.png")


def test_unwritable_and_wrong_measurements(tmp_path):
    op = degradations.make("cs2", image_size=(8, 8))
    with pytest.raises(ValueError, match="not images"):
        write_measurement(tmp_path / "cs.png", op.H(clean_image(3, 8, 8)), op, sigma_y=0.0)
    sr = degradations.make("sr2", image_size=(8, 8))
    with pytest.raises(ValueError, match="one measurement of shape"):
        write_measurement(tmp_path / "y.png", torch.zeros(2, 3, 4, 4), sr, sigma_y=0.0)
    write_measurement(tmp_path / "y.png", torch.zeros(3, 4, 4), sr, sigma_y=0.0)
    imageio.save_image(torch.rand(3, 5, 5), tmp_path / "y.png")  # replaced behind the sidecar's back
    with pytest.raises(ValueError, match="expects 3x4x4"):
        read_measurement(tmp_path / "y.png")
