"""The anytime strip and its animation: layout, enlargement by whole pixels, labels."""
import numpy as np
import torch

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
