"""Noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci 2022,
ROAD): removed pixels take the weighted mean of their 8 neighbours, solved
jointly for all removed pixels as one sparse linear system (so a removed
region fills in smoothly from its border), plus Gaussian noise. Direct
neighbours weigh 1/6, diagonal ones 1/12 (the paper's kernel); at the image
border only the neighbours inside count."""

from __future__ import annotations

import numpy as np

NEIGHBOURS = [(-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12)]


def impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """(C, H, W) image with the ``removed`` (H, W) pixels imputed. Every
    connected group of removed pixels must touch a kept pixel (true whenever
    any pixel is kept); else the system is singular and ValueError says so."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    image = np.asarray(image, dtype=np.float64)
    channels, height, width = image.shape
    removed = np.asarray(removed, dtype=bool)
    unknown = int(removed.sum())
    result = image.copy()
    if unknown == 0:
        return result.astype(np.float32)
    if unknown == height * width:
        raise ValueError("noisy linear imputation needs at least one kept pixel")
    index = np.full((height, width), -1, dtype=np.int64)
    index[removed] = np.arange(unknown)
    ys, xs = np.nonzero(removed)
    diagonal = np.zeros(unknown)
    rows, cols, values = [], [], []
    right = np.zeros((unknown, channels))
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        me, ny, nx = index[ys[inside], xs[inside]], ny[inside], nx[inside]
        diagonal[me] += weight
        other = index[ny, nx]
        linked = other >= 0
        rows.append(me[linked]); cols.append(other[linked]); values.append(np.full(linked.sum(), -weight))
        known = ~linked
        np.add.at(right, me[known], weight * image[:, ny[known], nx[known]].T)
    rows.append(np.arange(unknown)); cols.append(np.arange(unknown)); values.append(diagonal)
    matrix = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(unknown, unknown)).tocsc()
    try:
        solved = splu(matrix).solve(right)
    except RuntimeError as error:  # "Factor is exactly singular": a removed group with no kept neighbour
        raise ValueError(f"noisy linear imputation: a removed region touches no kept pixel ({error})") from None
    if noise > 0:
        solved = solved + (rng or np.random.default_rng(0)).normal(0.0, noise, size=solved.shape)
    result[:, ys, xs] = solved.T
    return result.astype(np.float32)
