"""Convolution kernels as picture tiles: each filter scaled to [0, 1] on its
own, then enlarged with nearest-neighbour so every weight stays one sharp
square."""

from __future__ import annotations

import math

import numpy as np

from cnnviz_core import render

GREY = 0.5


def normalize(filter_weights: np.ndarray, how: str) -> np.ndarray:
    """One filter (any shape) → values in [0, 1].

    ``minmax``: (w − min) / (max − min), as in Krizhevsky et al.'s figure of
    AlexNet's first layer: every filter uses the full range. ``symmetric``:
    0.5 + 0.5 · w / max|w|, so a zero weight is mid-grey and the sign of every
    weight can be read off. A constant (or all-zero) filter is mid-grey."""
    w = np.asarray(filter_weights, dtype=np.float64)
    if how == "symmetric":
        peak = float(np.abs(w).max(initial=0.0))
        return np.full(w.shape, GREY) if peak == 0 else GREY + GREY * w / peak
    low, high = float(w.min()), float(w.max())
    return np.full(w.shape, GREY) if high - low <= 1e-12 * max(abs(high), 1.0) else (w - low) / (high - low)


def enlarge(unit_hw_or_hwc: np.ndarray, factor: int) -> np.ndarray:
    """[0, 1] (kh, kw) or (kh, kw, 3) → RGB uint8 (kh·f, kw·f, 3), nearest-neighbour."""
    image = unit_hw_or_hwc if unit_hw_or_hwc.ndim == 3 else np.repeat(unit_hw_or_hwc[..., None], 3, axis=-1)
    image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return render.to_uint8(image)


def upscale_factor(kernel_hw: tuple[int, int], tile: int) -> int:
    return max(1, round(tile / max(kernel_hw)))


def grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Equally sized RGB tiles in rows of ``columns`` (0: a near-square grid)."""
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    return render.tile([tiles[i : i + columns] for i in range(0, len(tiles), columns)])
