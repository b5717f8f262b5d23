"""Whether an attribution map points at the object: the pointing game
(Zhang et al. 2016/2018), its energy-based version (Wang et al. 2020, the
Score-CAM paper), relevance mass and relevance rank accuracy (Arras et al.
2022). Each takes one (H, W) map and one (H, W) boolean region (the union of
an image's boxes, or its mask) at the model's input size.

Choices:

- pointing game: a hit when a pixel of maximal value lies within
  ``tolerance`` pixels (Euclidean) of the region. Zhang et al. allow 15 px
  at the original image size; the default here is 0 (the maximum must be
  inside, as in Quantus). Ties: the first maximum in row-major order
  (numpy's argmax), so a constant map points at its top-left pixel.
- energy pointing game: the map min-max scaled to [0, 1] (Score-CAM's
  maps are shown so), then the share of its sum inside the region. A
  constant map has no energy anywhere: NaN.
- relevance mass accuracy: the share of the positive relevance
  ``max(map, 0)`` that falls inside the region (Arras et al. count positive
  relevance only). No positive relevance: 0.
- relevance rank accuracy: with K the region's pixel count, the fraction of
  the K highest-valued pixels that lie inside the region (ties broken by a
  stable sort, highest first, so earlier pixels in row-major order win).
An empty region cannot be pointed at: every function then raises ValueError.
"""

from __future__ import annotations

import numpy as np


def _checked(saliency: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    saliency = np.asarray(saliency, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if saliency.shape != region.shape or saliency.ndim != 2:
        raise ValueError(f"a map and its region must be 2-D and the same shape, got {saliency.shape} and {region.shape}")
    if not region.any():
        raise ValueError("the region is empty: no box or mask pixel falls inside the model's input")
    if not np.isfinite(saliency).all():
        raise ValueError("the map holds NaN or infinite values")
    return saliency, region


def peak(saliency: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first maximum."""
    row, col = np.unravel_index(int(np.argmax(saliency)), np.shape(saliency))
    return int(row), int(col)


def pointing_hit(saliency: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> bool:
    saliency, region = _checked(saliency, region)
    row, col = peak(saliency)
    if region[row, col]:
        return True
    if tolerance <= 0:
        return False
    rows, cols = np.nonzero(region)
    return bool(((rows - row) ** 2 + (cols - col) ** 2).min() <= tolerance ** 2)


def energy_share(saliency: np.ndarray, region: np.ndarray) -> float:
    saliency, region = _checked(saliency, region)
    span = saliency.max() - saliency.min()
    if span == 0:
        return float("nan")
    energy = (saliency - saliency.min()) / span
    return float(energy[region].sum() / energy.sum())


def relevance_mass(saliency: np.ndarray, region: np.ndarray) -> float:
    saliency, region = _checked(saliency, region)
    positive = np.maximum(saliency, 0.0)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0


def relevance_rank(saliency: np.ndarray, region: np.ndarray) -> float:
    saliency, region = _checked(saliency, region)
    size = int(region.sum())
    order = np.argsort(-saliency.ravel(), kind="stable")[:size]
    return float(region.ravel()[order].sum() / size)
