"""Figures a person reads at a glance: the anytime strip and its animation, labelled grids of pictures.

`labelled_grid(rows)` lays out labelled pictures (images and std maps) in rows.
`std_picture(std)` draws a posterior std map, colour-mapped with a scale bar (`ipsolve restore --estimate mean`).
`anytime_strip(measurement, previews, nfes, psnrs)` draws, left to right, the measurement (shown at the
image's size, e.g. H⁺y) and every anytime preview, each column labelled with its NFE (and each tile with its
PSNR when a clean image is known); one row per sample. Small images are enlarged with nearest-neighbour
interpolation (every pixel stays a visible square) until a tile is at least `MIN_TILE` pixels on its
longer side. Labels use PIL's default font, so nothing is downloaded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ipsolve.imageio import from_model, to_pil

MIN_TILE = 256   # a tile is enlarged by an integer factor until its longer side is at least this
GAP = 8          # white pixels between tiles
FONT_SIZE = 16
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def measurement_picture(y: torch.Tensor, op) -> torch.Tensor:
    """What a measurement looks like at the image's size: H⁺y as a (C, H, W) picture in [0, 1].

    Super-resolution shows the low-resolution image enlarged by blocks, inpainting the observed pixels
    with mid-gray holes, colorization the gray image, denoising and deblurring y itself. A nonlinear
    sensor (no H⁺) shows y as it is.
    """
    y = y.reshape(-1, *op.measurement_shape)[:1]
    shown = op.H_pinv(y) if hasattr(op, "H_pinv") else y
    return from_model(shown)[0].detach().to("cpu", torch.float32)


def anytime_strip(measurement: torch.Tensor | None, previews: Sequence[torch.Tensor], nfes: Sequence[int],
                  psnrs: Sequence[Sequence[float]] | None = None) -> Image.Image:
    """The anytime strip as an RGB picture.

    measurement: (C, H, W) in [0, 1] at the image's size, or None (generation has none);
    previews: one (B, C, H, W) batch in [0, 1] per preview (B samples, one row each); nfes: the NFE count of
    each preview; psnrs: per preview, the B PSNRs in dB against the clean image, or None.
    """
    previews = list(previews)
    if not previews or len(nfes) != len(previews) or (psnrs is not None and len(psnrs) != len(previews)):
        raise ValueError(f"anytime_strip needs previews with one NFE (and PSNR list) each, got "
                         f"{len(previews)} previews, {len(nfes)} NFE counts")
    samples, _, height, width = previews[0].shape
    scale = max(1, math.ceil(MIN_TILE / max(height, width)))
    tile_h, tile_w = height * scale, width * scale
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 6
    caption = line if psnrs is not None else 0
    columns = [("measurement", [measurement], None)] if measurement is not None else []
    columns += [(f"NFE {nfe}", list(batch), k) for k, (nfe, batch) in enumerate(zip(nfes, previews))]

    figure = Image.new("RGB", (GAP + len(columns) * (tile_w + GAP), line + samples * (tile_h + caption + GAP)),
                       BACKGROUND)
    draw = ImageDraw.Draw(figure)
    for column, (label, tiles, preview) in enumerate(columns):
        left = GAP + column * (tile_w + GAP)
        _centred(draw, label, left, tile_w, 2, font)
        for row, tile in enumerate(tiles):
            top = line + row * (tile_h + caption + GAP)
            figure.paste(_enlarged(tile, tile_w, tile_h), (left, top))
            if psnrs is not None and preview is not None:
                _centred(draw, f"{float(psnrs[preview][row]):.2f} dB", left, tile_w, top + tile_h + 2, font)
    return figure


def anytime_frames(measurement, previews, nfes, psnrs=None) -> list[Image.Image]:
    """One picture per preview for the animation: the measurement beside that preview, labelled alike."""
    return [anytime_strip(measurement, [batch], [nfe], None if psnrs is None else [psnrs[k]])
            for k, (batch, nfe) in enumerate(zip(previews, nfes))]


def labelled_grid(rows: Sequence[Sequence[tuple[str, torch.Tensor | Image.Image]]]) -> Image.Image:
    """Pictures in rows, each under its label, as one RGB picture (e.g. a posterior's samples, mean and std).

    rows: per row, (label, picture) pairs; a picture is a (C, H, W) image in [0, 1], enlarged like the
    strip's tiles (longer side at least `MIN_TILE`), or a PIL picture (`std_picture`'s), pasted as it is.
    Every column is as wide as its widest picture (each centred in it), every row as tall as its tallest."""
    cells = [[(label, _picture(picture)) for label, picture in row] for row in rows]
    if not cells or not all(cells):
        raise ValueError("labelled_grid needs at least one row, each with at least one (label, picture)")
    widths = [max(row[column][1].width for row in cells if column < len(row))
              for column in range(max(len(row) for row in cells))]
    line = FONT_SIZE + 6
    heights = [line + max(picture.height for _, picture in row) for row in cells]
    figure = Image.new("RGB", (GAP + sum(width + GAP for width in widths), GAP + sum(h + GAP for h in heights)),
                       BACKGROUND)
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default(size=FONT_SIZE)
    top = GAP
    for row, height in zip(cells, heights):
        left = GAP
        for (label, picture), width in zip(row, widths):
            _centred(draw, label, left, width, top, font)
            figure.paste(picture, (left + (width - picture.width) // 2, top + line))
            left += width + GAP
        top += height + GAP
    return figure


def _picture(picture) -> Image.Image:
    """A PIL picture as RGB, or a (C, H, W) image in [0, 1] enlarged to a tile."""
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    height, width = picture.shape[-2:]
    scale = max(1, math.ceil(MIN_TILE / max(height, width)))
    return _enlarged(picture.detach().to("cpu", torch.float32), width * scale, height * scale)


def _enlarged(image: torch.Tensor, width: int, height: int) -> Image.Image:
    return to_pil(image).convert("RGB").resize((width, height), Image.Resampling.NEAREST)


def _centred(draw, text, left, width, top, font) -> None:
    text_width = draw.textlength(text, font=font)
    draw.text((left + max(0.0, (width - text_width) / 2), top), text, fill=INK, font=font)


STD_COLORMAP = "viridis"  # perceptual and readable in grey: dark = certain, bright = uncertain


def std_picture(std: torch.Tensor, title: str | None = None) -> Image.Image:
    """A per-pixel posterior std (C, H, W) in [0, 1] pixel units as an RGB picture: colour-mapped
    (`STD_COLORMAP`, the root mean square over channels for colour images), enlarged with nearest-neighbour
    interpolation like the strip's tiles (longer side at least `MIN_TILE`), with a scale bar labelled in
    [0, 1] pixel units from 0 to the largest std shown."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = std.detach().to("cpu", torch.float32)
    values = std.square().mean(dim=0).sqrt().numpy() if std.ndim == 3 else std.numpy()
    height, width = values.shape
    scale = max(1, math.ceil(MIN_TILE / max(height, width)))
    dpi = 100
    tile_w, tile_h = width * scale / dpi, height * scale / dpi
    figure = plt.figure(figsize=(tile_w + 1.6, tile_h + (0.5 if title else 0.2)), dpi=dpi)
    left, bottom = 0.1 / figure.get_figwidth(), 0.1 / figure.get_figheight()
    axes = figure.add_axes((left, bottom, tile_w / figure.get_figwidth(), tile_h / figure.get_figheight()))
    shown = axes.imshow(values, cmap=STD_COLORMAP, vmin=0.0, vmax=max(float(values.max()), 1 / 255),
                        interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=10)
    bar = figure.add_axes((left + (tile_w + 0.1) / figure.get_figwidth(), bottom, 0.15 / figure.get_figwidth(),
                           tile_h / figure.get_figheight()))
    figure.colorbar(shown, cax=bar).set_label("posterior std, [0, 1] pixel units", fontsize=9)
    bar.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
