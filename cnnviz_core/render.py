"""Rendering raw arrays for people: normalization happens only here.

Maps: a map with negative values is *signed* (integrated gradients, CAM,
occlusion): it is drawn on a diverging colour map centred at zero (blue below,
white at zero, red above) with limits ±m, m a high percentile of |value|. A
map without negative values (Grad-CAM, saliency, RISE) is drawn on a dark-to-
bright map from its minimum to a high percentile. The percentile (99.5) keeps a
few extreme pixels from washing out the rest; values beyond the limits take
the end colours, and the colour bar says so (< / > on its end labels).

Image-space results (the signed gradient images of saliency, guided backprop,
deconvnet): centred on grey (zero), each image scaled by the 99th percentile
of its |values|, clipped beyond it, as the papers show them."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAP_PERCENTILE = 99.5  # limits of a heatmap's colour scale
IMAGE_PERCENTILE = 99.0  # scale of an image-space (gradient) result

# Anchor colours of a perceptually ordered dark-to-bright colormap (close to
# matplotlib's "inferno"), interpolated linearly.
_ANCHORS = np.array(
    [
        [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
        [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
    ],
    dtype=np.float32,
) / 255.0

# Blue - white - red (ColorBrewer's RdBu, reversed): negative values blue,
# zero white, positive red.
_DIVERGING = np.array(
    [
        [5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
        [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31],
    ],
    dtype=np.float32,
) / 255.0


@dataclasses.dataclass(frozen=True)
class MapScale:
    """The value range a map's colours span. ``signed``: diverging and
    centred at zero (low == -high). ``clipped_low`` / ``clipped_high``: some
    values lie beyond that end and take its colour."""

    low: float
    high: float
    signed: bool
    clipped_low: bool = False
    clipped_high: bool = False

    def unit(self, values: np.ndarray) -> np.ndarray:
        """Values → [0, 1] along the colour map (0.5 is zero on a signed scale)."""
        values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        span = self.high - self.low
        if span <= 0:
            return np.full(values.shape, 0.5 if self.signed else 0.0, np.float32)
        return np.clip((values - self.low) / span, 0.0, 1.0)


def map_scale(values: np.ndarray, percentile: float = MAP_PERCENTILE) -> MapScale:
    """Limits of a map's colour scale (see the module's docstring)."""
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return MapScale(0.0, 0.0, False)
    low, high = float(finite.min()), float(finite.max())
    if low < 0:
        bound = float(np.percentile(np.abs(finite), percentile)) or max(-low, high)
        return MapScale(-bound, bound, True, clipped_low=low < -bound, clipped_high=high > bound)
    top = float(np.percentile(finite, percentile))
    if top <= low:
        top = high
    return MapScale(low, top, False, clipped_high=high > top)


def scale_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map becomes zeros."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(np.min(values)), float(np.max(values))
    if not np.isfinite(low) or not np.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _interpolate(anchors: np.ndarray, unit: np.ndarray) -> np.ndarray:
    position = np.clip(unit, 0.0, 1.0) * (len(anchors) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(anchors) - 1)
    weight = (position - low)[..., None]
    return anchors[low] * (1 - weight) + anchors[high] * weight


def colormap(unit: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) RGB in [0, 1], dark to bright."""
    return _interpolate(_ANCHORS, unit)


def diverging_colormap(unit: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) RGB in [0, 1]: blue, white at 0.5, red."""
    return _interpolate(_DIVERGING, unit)


def colours(values: np.ndarray, scale: MapScale) -> np.ndarray:
    """A map's colours on its scale, RGB in [0, 1]."""
    return (diverging_colormap if scale.signed else colormap)(scale.unit(values))


def heatmap(values: np.ndarray, scale: MapScale | None = None) -> np.ndarray:
    """A raw (H, W) map → RGB uint8 heatmap (no colour bar)."""
    return to_uint8(colours(values, scale or map_scale(values)))


def overlay(image_chw: np.ndarray, values: np.ndarray, alpha: float = 0.5, scale: MapScale | None = None) -> np.ndarray:
    """The heatmap blended over an image (3, H, W) in [0, 1] → RGB uint8.
    Unsigned maps: a constant blend, ``alpha`` of heatmap. Signed maps: the
    blend grows with √|value| up to ``alpha`` at the scale's ends, so where the
    map is near zero the photograph shows through instead of white."""
    scale = scale or map_scale(values)
    base = np.transpose(np.clip(image_chw, 0, 1), (1, 2, 0))
    weight = alpha
    if scale.signed:
        weight = alpha * np.sqrt(np.abs(scale.unit(values) * 2 - 1))[..., None]
    return to_uint8((1 - weight) * base + weight * colours(values, scale))


def gradient_image(values_chw: np.ndarray, percentile: float = IMAGE_PERCENTILE) -> np.ndarray:
    """A signed (3, H, W) image-space result → RGB uint8, centred on grey
    (zero) and scaled by the ``percentile`` of its |values|, beyond which
    it is clipped: the papers' rendering of gradient images."""
    values = np.nan_to_num(np.asarray(values_chw, dtype=np.float32))
    scale = float(np.percentile(np.abs(values), percentile)) or float(np.abs(values).max()) or 1.0
    return to_uint8(np.transpose(np.clip(0.5 + 0.5 * values / scale, 0, 1), (1, 2, 0)))


# -- colour bar ------------------------------------------------------------------
COLORBAR_MIN_WIDTH = 128  # narrower pictures get a wider white canvas, so the labels fit
_BAR_HEIGHT, _MARGIN, _TEXT_HEIGHT = 8, 4, 16


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def tick_label(value: float) -> str:
    """A colour bar's number: 3 significant digits (ASCII: the default font has no other signs)."""
    return "0" if value == 0 else f"{value:.3g}"


def with_colorbar(rgb: np.ndarray, scale: MapScale) -> np.ndarray:
    """The picture with a horizontal colour bar under it: the colour map from
    ``scale.low`` to ``scale.high`` and their values (0 marked on signed
    scales; < / > where values beyond an end were clipped)."""
    height, width = rgb.shape[:2]
    canvas_width = max(width, COLORBAR_MIN_WIDTH)
    strip = _MARGIN + _BAR_HEIGHT + 2 + _TEXT_HEIGHT
    canvas = np.full((height + strip, canvas_width, 3), 255, np.uint8)
    canvas[:height, :width] = rgb
    left, right = _MARGIN, canvas_width - _MARGIN
    ramp = np.linspace(0.0, 1.0, right - left, dtype=np.float32)
    bar = to_uint8((diverging_colormap if scale.signed else colormap)(ramp))
    top = height + _MARGIN
    canvas[top : top + _BAR_HEIGHT, left:right] = bar[None]
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), _font()
    text_top = top + _BAR_HEIGHT + 1
    low = ("<" if scale.clipped_low else "") + tick_label(scale.low)
    high = (">" if scale.clipped_high else "") + tick_label(scale.high)
    draw.text((left, text_top), low, fill=(0, 0, 0), font=font)
    draw.text((right - draw.textlength(high, font=font), text_top), high, fill=(0, 0, 0), font=font)
    if scale.signed:
        middle = (left + right) // 2
        draw.line([(middle, top), (middle, top + _BAR_HEIGHT - 1)], fill=(0, 0, 0))
        draw.text((middle - draw.textlength("0", font=font) / 2, text_top), "0", fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_to_uint8(image_chw: np.ndarray) -> np.ndarray:
    return to_uint8(np.transpose(image_chw, (1, 2, 0)))


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def tile(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Lay RGB uint8 images out in a grid on white; each cell is as large as
    the largest image, smaller ones sit at its top left."""
    height = max(item.shape[0] for row in rows for item in row)
    width = max(item.shape[1] for row in rows for item in row)
    columns = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y : y + item.shape[0], x : x + item.shape[1]] = item
    return canvas
