"""Image reading and writing: round trips, grids, GIFs, atomic writes, errors."""
import os

import pytest
import torch
from PIL import Image

from ipsolve import imageio


def random_image(channels, height, width, seed=0):
    return torch.rand(channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_is_8_bit_exact(tmp_path, channels):
    image = random_image(channels, 5, 7)
    imageio.save_image(image, tmp_path / "a.png")
    loaded = imageio.load_image(tmp_path / "a.png")
    assert loaded.dtype == torch.float32 and loaded.shape == (channels, 5, 7)
    torch.testing.assert_close(loaded, (image * 255).round() / 255, rtol=0, atol=1e-6)


def test_save_clamps_and_modes_convert(tmp_path):
    image = torch.tensor([[[-0.5, 0.25, 1.5]]])
    imageio.save_image(image, tmp_path / "g.png")
    torch.testing.assert_close(imageio.load_image(tmp_path / "g.png"),
                               torch.tensor([[[0.0, 64 / 255, 1.0]]]))
    assert imageio.load_image(tmp_path / "g.png", mode="RGB").shape == (3, 1, 3)
    imageio.save_image(random_image(3, 2, 2), tmp_path / "c.png")
    assert imageio.load_image(tmp_path / "c.png", mode="L").shape == (1, 2, 2)


def test_batches_are_saved_as_grids(tmp_path):
    batch = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0, 0.2)])
    imageio.save_image(batch, tmp_path / "grid.png")
    grid = imageio.load_image(tmp_path / "grid.png")
    assert grid.shape == (3, 2 + 2 * 6, 2 + 2 * 6)  # 2×2 tiles of 4 pixels with 2-pixel padding
    torch.testing.assert_close(grid[:, 2:6, 8:12], torch.full((3, 4, 4), 128 / 255))
    imageio.save_grid([batch[0], batch[1], batch[2]], tmp_path / "strip.png", nrow=3)
    assert imageio.load_image(tmp_path / "strip.png").shape == (3, 8, 20)
    imageio.save_grid(batch[:, :1], tmp_path / "gray.png", nrow=4)
    assert imageio.load_image(tmp_path / "gray.png").shape == (1, 8, 26)


def test_gif_has_every_frame(tmp_path):
    frames = [random_image(3, 6, 6, seed) for seed in range(3)]
    imageio.save_gif(frames, tmp_path / "a.gif", duration_ms=100)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (6, 6)


def test_model_space_conversion():
    x = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(imageio.to_model(x), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(imageio.from_model(imageio.to_model(x)), x)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with imageio.atomic_path(target) as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("interrupted")
    assert not target.exists() and os.listdir(tmp_path / "sub") == []
    with imageio.atomic_path(target) as tmp:
        open(tmp, "w").write("done")
    assert target.read_text() == "done" and os.listdir(tmp_path / "sub") == ["out.txt"]


def test_unreadable_files_raise(tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png is not a readable image"):
        imageio.load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        imageio.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="image mode"):
        imageio.load_image(tmp_path / "bad.png", mode="CMYK")
    with pytest.raises(ValueError, match=r"\(1 or 3, H, W\)"):
        imageio.save_image(torch.zeros(2, 4, 4), tmp_path / "two.png")
