"""The anytime strip and its animation: layout, enlargement by whole pixels, labels."""
import numpy as np
import pytest
import torch
from PIL import Image

import degradations
from ipsolve import figures
from ipsolve.figures import GAP, MIN_TILE, anytime_frames, anytime_strip, measurement_picture


def batches(count, samples, size=(32, 32), channels=1):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(samples, channels, *size, generator=g) for _ in range(count)]


def as_tensor(picture):
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255


def test_small_previews_become_labelled_tiles_of_at_least_256_pixels_beside_the_measurement():
    previews = batches(4, samples=2)
    strip = anytime_strip(previews[0][0], previews, [5, 10, 15, 20])
    label = figures.FONT_SIZE + 6
    tile = 8 * 32  # the smallest whole factor that reaches 256 pixels
    assert tile >= MIN_TILE and strip.size == (GAP + 5 * (tile + GAP), label + 2 * (tile + GAP))
    pixels = as_tensor(strip)
    for column, batch in enumerate(previews, start=1):
        left = GAP + column * (tile + GAP)
        for row in range(2):
            top = label + row * (tile + GAP)
            shown = pixels[0, top:top + tile, left:left + tile]
            expected = batch[row, 0].mul(255).round() / 255
            torch.testing.assert_close(shown, expected.repeat_interleave(8, 0).repeat_interleave(8, 1))
    below_measurement = pixels[:, label + tile + GAP:, GAP:GAP + tile]
    assert bool((below_measurement == 1).all())  # one measurement for all samples: drawn once
    assert bool((pixels[:, :label, GAP + tile + GAP:] < 0.5).any())  # the NFE labels are drawn


def test_psnr_captions_add_a_line_under_every_tile_and_large_images_keep_their_size():
    previews = batches(2, samples=1, size=(300, 200), channels=3)
    plain = anytime_strip(None, previews, [3, 6])
    captioned = anytime_strip(None, previews, [3, 6], psnrs=[[20.0], [21.5]])
    assert plain.size == (GAP + 2 * (200 + GAP), figures.FONT_SIZE + 6 + 300 + GAP)
    assert captioned.size == (plain.size[0], plain.size[1] + figures.FONT_SIZE + 6)
    caption_band = as_tensor(captioned)[:, -(figures.FONT_SIZE + 6 + GAP):, :]
    assert bool((caption_band < 0.5).any())


def test_every_gif_frame_is_the_measurement_beside_one_preview():
    previews = batches(3, samples=1)
    frames = anytime_frames(previews[0][0], previews, [2, 4, 6])
    assert len(frames) == 3
    assert {frame.size for frame in frames} == {anytime_strip(previews[0][0], previews[:1], [2]).size}


def test_the_measurement_is_shown_at_the_image_size():
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    y = torch.rand(1, 1, 8, 8) * 2 - 1
    shown = measurement_picture(y, op)
    torch.testing.assert_close(shown, ((y[0] + 1) / 2).repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_a_labelled_grid_sizes_columns_by_their_widest_picture_and_enlarges_image_tiles():
    """Row 1: a 32×32 image (enlarged 8× to 256) beside a 100×40 picture; row 2: one 300×50 picture. Column 1
    is 300 wide (its widest), column 2 100; each row is its label line and its tallest picture."""
    image = batches(1, samples=1)[0][0]
    narrow = Image.new("RGB", (100, 40), (255, 0, 0))
    wide = Image.new("RGB", (300, 50), (0, 0, 255))
    grid = figures.labelled_grid([[("sample", image), ("std", narrow)], [("mean", wide)]])
    line = figures.FONT_SIZE + 6
    assert grid.size == (GAP + 300 + GAP + 100 + GAP, GAP + line + 256 + GAP + line + 50 + GAP)
    pixels = as_tensor(grid)
    left = GAP + (300 - 256) // 2  # centred in its column
    shown = pixels[0, GAP + line:GAP + line + 256, left:left + 256]
    expected = image[0].mul(255).round() / 255
    torch.testing.assert_close(shown, expected.repeat_interleave(8, 0).repeat_interleave(8, 1))
    narrow_shown = pixels[:, GAP + line:GAP + line + 40, GAP + 300 + GAP:GAP + 300 + GAP + 100]  # pasted at the top
    assert bool((narrow_shown[0] == 1).all()) and bool((narrow_shown[1:] == 0).all())
    blue = pixels[:, 2 * GAP + line + 256 + line, GAP:GAP + 300]
    assert bool((blue[2] == 1).all()) and bool((blue[:2] == 0).all())
    assert bool((pixels[:, GAP:GAP + line, :] < 0.5).any())  # labels drawn


def test_a_labelled_grid_needs_pictures():
    with pytest.raises(ValueError, match="labelled_grid"):
        figures.labelled_grid([])
    with pytest.raises(ValueError, match="labelled_grid"):
        figures.labelled_grid([[]])
