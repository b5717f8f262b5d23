"""Adaptive coarse-to-fine occlusion (Krypton's drill-down, Nakandala et al.
2019): occlude first on a coarse subset of the window grid (every second
position along each axis, the edge-flush one always kept), estimate the other
positions by bilinear interpolation between coarse ones, then occlude exactly
only the positions inside the top fraction of coarse cells by score drop."""

from __future__ import annotations

import math

import numpy as np

from cnnviz_plugins.attribution.occlusion.geometry import WindowGrid


def coarse_axis(count: int) -> np.ndarray:
    """Every second index along an axis, plus the last one: the estimate then
    only ever interpolates, never extrapolates."""
    return np.unique(np.r_[np.arange(0, count, 2), count - 1])


def interpolation_matrix(starts: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """(fine, coarse) weights of a linear interpolation along one axis, in
    pixel positions (the edge-flush window may sit closer than a stride)."""
    weights = np.zeros((len(starts), len(coarse)))
    for i, position in enumerate(starts):
        k = int(np.searchsorted(starts[coarse], position, side="right")) - 1
        k = min(max(k, 0), len(coarse) - 1)
        if k == len(coarse) - 1 or starts[coarse[k]] == position:
            weights[i, k] = 1.0
            continue
        left, right = starts[coarse[k]], starts[coarse[k + 1]]
        t = (position - left) / (right - left)
        weights[i, k], weights[i, k + 1] = 1 - t, t
    return weights


class CoarseToFine:
    """The plan for one window grid and refine fraction."""

    def __init__(self, grid: WindowGrid, fraction: float):
        self.grid = grid
        self.fraction = fraction
        gy, gx = grid.shape
        self.rows, self.cols = coarse_axis(gy), coarse_axis(gx)
        self._wy = interpolation_matrix(grid.ys, self.rows)
        self._wx = interpolation_matrix(grid.xs, self.cols)

    @property
    def coarse_flat(self) -> np.ndarray:
        """Row-major flat indices of the coarse positions."""
        return (self.rows[:, None] * self.grid.shape[1] + self.cols[None, :]).reshape(-1)

    def estimate(self, coarse: np.ndarray) -> np.ndarray:
        """(gy, gx) grid interpolated from the (rows, cols) coarse drops; exact
        at the coarse positions."""
        return self._wy @ np.asarray(coarse, np.float64) @ self._wx.T

    def cells(self) -> list[tuple[int, int, int, int]]:
        """Coarse cells as fine index ranges (r0, r1, c0, c1), inclusive: the
        blocks between neighbouring coarse positions."""
        def spans(coarse):
            return [(coarse[k], coarse[k + 1]) for k in range(len(coarse) - 1)] or [(coarse[0], coarse[0])]

        return [(r0, r1, c0, c1) for r0, r1 in spans(self.rows) for c0, c1 in spans(self.cols)]

    def refined_flat(self, coarse: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Flat indices to occlude exactly (the coarse ones excluded), chosen as
        every fine position inside the top ``fraction`` of coarse cells ranked
        by the mean score drop at their corners; also the number of cells
        chosen and in all."""
        coarse = np.asarray(coarse, np.float64)
        row_of = {int(r): k for k, r in enumerate(self.rows)}
        col_of = {int(c): k for k, c in enumerate(self.cols)}
        cells = self.cells()
        drops = np.array([
            coarse[[row_of[r0], row_of[r0], row_of[r1], row_of[r1]], [col_of[c0], col_of[c1], col_of[c0], col_of[c1]]].mean()
            for r0, r1, c0, c1 in cells
        ])
        chosen = max(1, math.ceil(self.fraction * len(cells) - 1e-9))
        order = np.argsort(-drops, kind="stable")[:chosen]
        wanted = np.zeros(self.grid.shape, dtype=bool)
        for index in order:
            r0, r1, c0, c1 = cells[index]
            wanted[r0 : r1 + 1, c0 : c1 + 1] = True
        wanted.reshape(-1)[self.coarse_flat] = False
        return np.flatnonzero(wanted), chosen, len(cells)
