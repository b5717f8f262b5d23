"""How alike two attribution maps are: Spearman rank correlation and SSIM,
the two similarities of the model-randomization sanity check (Adebayo et al.
2018) and of the random-logit test (Sixt et al. 2020).

Choices (the same as Adebayo et al.'s code and Quantus's defaults where they
say one):

- ``absolute``: maps are compared by ``|map|`` when asked (Adebayo et al.
  report both; a signed gradient map and its negation rank alike by size).
- Spearman: Pearson correlation of the ranks, ties given their average rank
  (the textbook definition, scipy's ``spearmanr``). A constant map has no
  ranking: its correlation is NaN.
- SSIM (Wang et al. 2004): each map min-max scaled to [0, 1] (so the data
  range is 1; a constant map becomes all zeros), a 7 x 7 uniform window over
  the valid positions, sample covariances, K1 = 0.01, K2 = 0.03, the mean of
  the local SSIM values — scikit-image's ``structural_similarity`` defaults.
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # each run of equal values gets the mean of the positions it occupies
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    run_rank = (starts + ends + 1) / 2.0  # mean of (start+1) .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> float:
    """Spearman's rank correlation of two maps of the same shape."""
    a, b = _pair(a, b, absolute)
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    scale = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if scale == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / scale, -1.0, 1.0))


def unit_scaled(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1]; a constant map becomes zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def _box_means(image: np.ndarray, size: int) -> np.ndarray:
    """The mean over every size x size window lying inside the image."""
    total = np.pad(image, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]
    return sums / (size * size)


def ssim(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> float:
    """Structural similarity of two 2-D maps, each scaled to [0, 1] first."""
    a, b = _pair(a, b, absolute)
    if a.ndim != 2:
        raise ValueError(f"ssim compares 2-D maps, got shape {a.shape}")
    size = min(SSIM_WINDOW, *a.shape)
    size -= 1 - size % 2  # an odd window, as scikit-image requires
    x, y = unit_scaled(a), unit_scaled(b)
    n = size * size
    unbias = n / (n - 1.0) if n > 1 else 1.0
    mx, my = _box_means(x, size), _box_means(y, size)
    vx = (_box_means(x * x, size) - mx * mx) * unbias
    vy = (_box_means(y * y, size) - my * my) * unbias
    cxy = (_box_means(x * y, size) - mx * my) * unbias
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    local = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(local.mean())


def _pair(a, b, absolute: bool) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {a.shape} and {b.shape}")
    return (np.abs(a), np.abs(b)) if absolute else (a, b)
