"""The perturbation shared by deletion, insertion and pixel flipping: each
image's pixels (or patches) are taken in the order of its map, most relevant
first, and step k shows the first ``counts[k]`` of them from one image
(``end``) and the rest from another (``start``). Deletion goes from the image
to a baseline, insertion from a blurred image to the image.

The inputs of every step of every image are made lazily, a chunk at a time,
on the device the forward runner takes them on (see
``cnnviz_core.metric_forward.ForwardScores``)."""

from __future__ import annotations

import numpy as np


def relevance_ranks(maps: np.ndarray, patch: int = 1) -> tuple[np.ndarray, int]:
    """Each pixel's place in its map's order, most relevant first: (b, H, W)
    int64 ranks, and the number of ranked units (pixels, or patches of
    ``patch`` x ``patch`` pixels ranked by their mean relevance; border
    patches are smaller). Ties keep reading order (a stable sort), so the same
    map gives the same order on every runtime."""
    maps = np.asarray(maps, dtype=np.float64)
    b, height, width = maps.shape
    rows, cols = -(-height // patch), -(-width // patch)
    if patch > 1:
        padded = np.full((b, rows * patch, cols * patch), np.nan)
        padded[:, :height, :width] = maps
        units = np.nanmean(padded.reshape(b, rows, patch, cols, patch), axis=(2, 4)).reshape(b, -1)
    else:
        units = maps.reshape(b, -1)
    order = np.argsort(-units, axis=1, kind="stable")
    unit_ranks = np.empty_like(order)
    np.put_along_axis(unit_ranks, order, np.arange(units.shape[1])[None].repeat(b, 0), axis=1)
    if patch > 1:
        grid = unit_ranks.reshape(b, rows, cols).repeat(patch, axis=1).repeat(patch, axis=2)
        return np.ascontiguousarray(grid[:, :height, :width]), rows * cols
    return unit_ranks.reshape(b, height, width), units.shape[1]


def step_counts(units: int, steps: int) -> np.ndarray:
    """Units replaced after each of ``steps`` equal steps: round(k * units / steps), k = 0 … steps."""
    return np.round(np.arange(steps + 1) * units / steps).astype(np.int64)


class OrderedReplacement:
    """``build(lo, hi, device)`` for ForwardScores: job item j is image
    ``j // len(counts)`` at step ``j % len(counts)``."""

    def __init__(self, start: np.ndarray, end: np.ndarray, ranks: np.ndarray, counts: np.ndarray):
        self.start = np.ascontiguousarray(start, dtype=np.float32)
        self.end = np.ascontiguousarray(end, dtype=np.float32)
        self.ranks, self.counts = ranks, np.asarray(counts, dtype=np.int64)
        self._on: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self.start) * len(self.counts)

    def _tensors(self, device: str):
        if device not in self._on:
            import torch

            self._on[device] = tuple(torch.as_tensor(a).to(device) for a in (self.start, self.end, self.ranks, self.counts))
        return self._on[device]

    def __call__(self, lo: int, hi: int, device: str = "cpu"):
        import torch

        start, end, ranks, counts = self._tensors(device)
        items = torch.arange(lo, hi, device=start.device)
        image, step = items // len(self.counts), items % len(self.counts)
        shown = ranks[image] < counts[step].view(-1, 1, 1)  # (n, H, W): taken from `end`
        return torch.where(shown.unsqueeze(1), end[image], start[image])


def trapezoid_auc(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Area under each row of ``curves`` over ``x`` by the trapezoid rule."""
    curves = np.asarray(curves, dtype=np.float64)
    widths = np.diff(np.asarray(x, dtype=np.float64))
    return ((curves[:, 1:] + curves[:, :-1]) * 0.5 * widths).sum(axis=1)
