"""Small multiples of per-layer weight histograms, the "near zero" band in
orange. Drawn directly with numpy and PIL: a model has dozens of layers, and
one matplotlib axes per layer costs seconds where this costs milliseconds."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cnnviz_core import render

from cnnviz_plugins.analysis.pruning.magnitude import LayerStats

PANEL = (220, 118)  # width, height in pixels
PLOT = (10, 34, 210, 98)  # left, top, right, bottom of the bars
BAR, NEAR_ZERO, BAND, INK = (76, 114, 176), (221, 132, 82), (250, 226, 208), (40, 40, 40)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def panel(layer: LayerStats) -> np.ndarray:
    """One layer's histogram over [−max|w|, max|w|] → RGB uint8 (H, W, 3)."""
    width, height = PANEL
    left, top, right, bottom = PLOT
    canvas = np.full((height, width, 3), 255, np.uint8)
    columns = np.arange(left, right)
    centres = layer.edges[0] + (columns - left + 0.5) / (right - left) * (layer.edges[-1] - layer.edges[0])
    bins = np.clip(((columns - left) * len(layer.histogram)) // (right - left), 0, len(layer.histogram) - 1)
    heights = np.rint(layer.histogram[bins] / max(int(layer.histogram.max()), 1) * (bottom - top)).astype(int)
    near = np.abs(centres) < layer.threshold
    rows = np.arange(top, bottom)[:, None]
    filled = rows >= bottom - heights[None, :]
    area = canvas[top:bottom, left:right]
    area[:] = np.where(near[None, :, None], BAND, 255)
    area[filled] = BAR
    area[filled & near[None, :]] = NEAR_ZERO
    canvas[bottom, left:right] = INK
    canvas[bottom : bottom + 3, (left + right) // 2] = INK  # the zero tick
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    small, tiny = _font(11), _font(9)
    name = layer.name if len(layer.name) <= 34 else "…" + layer.name[-33:]
    draw.text((4, 2), name, fill=INK, font=small)
    draw.text((4, 17), f"{layer.count:,} weights, {layer.fraction_below:.1%} near 0", fill=INK, font=tiny)
    peak = layer.edges[-1]
    draw.text((left, bottom + 4), f"{-peak:.2g}", fill=INK, font=tiny)
    draw.text(((left + right) // 2 - 2, bottom + 4), "0", fill=INK, font=tiny)
    draw.text((right, bottom + 4), f"{peak:.2g}", fill=INK, font=tiny, anchor="ra")
    return np.asarray(image)


def histogram_grid(stats: list[LayerStats], title: str) -> np.ndarray:
    """All layers' panels in rows (6 per row, 8 for many layers) under a title."""
    columns = min(len(stats), 6 if len(stats) <= 36 else 8)
    panels = [panel(layer) for layer in stats]
    body = render.tile([panels[i : i + columns] for i in range(0, len(panels), columns)], gap=6)
    header = Image.new("RGB", (body.shape[1], 26), (255, 255, 255))
    ImageDraw.Draw(header).text((6, 5), title, fill=INK, font=_font(13))
    return np.concatenate([np.asarray(header), body])

