"""Rendering raw arrays for people: normalization happens only here."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered dark-to-bright colormap (close to
# matplotlib's "inferno"), interpolated linearly.
_ANCHORS = np.array(
    [
        [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
        [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
    ],
    dtype=np.float32,
) / 255.0


def scale_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map becomes zeros."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(np.min(values)), float(np.max(values))
    if not np.isfinite(low) or not np.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def colormap(unit: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) RGB in [0, 1]."""
    position = np.clip(unit, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_ANCHORS) - 1)
    weight = (position - low)[..., None]
    return _ANCHORS[low] * (1 - weight) + _ANCHORS[high] * weight


def heatmap(values: np.ndarray) -> np.ndarray:
    """A raw (H, W) map → RGB uint8 heatmap."""
    return to_uint8(colormap(scale_unit(values)))


def overlay(image_chw: np.ndarray, values: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap blended over an image (3, H, W) in [0, 1] → RGB uint8."""
    base = np.transpose(np.clip(image_chw, 0, 1), (1, 2, 0))
    return to_uint8((1 - alpha) * base + alpha * colormap(scale_unit(values)))


def gradient_image(values_chw: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """A signed (3, H, W) image-space result → RGB uint8, centred on grey and
    scaled by a high percentile of its magnitude, as the papers show them."""
    values = np.asarray(values_chw, dtype=np.float32)
    scale = float(np.percentile(np.abs(values), percentile)) or 1.0
    return to_uint8(np.transpose(np.clip(0.5 + 0.5 * values / scale, 0, 1), (1, 2, 0)))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_to_uint8(image_chw: np.ndarray) -> np.ndarray:
    return to_uint8(np.transpose(image_chw, (1, 2, 0)))


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def tile(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Lay equally sized RGB uint8 images out in a grid on white."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y : y + height, x : x + width] = item
    return canvas
