"""Where occlusion's windows go and how their score drops become a per-pixel
map: window and stride sizes (square or rectangular), the grid of window
positions, and the mean over the windows covering each pixel."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from cnnviz_core import InputError

_PAIR = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def parse_pair(value, name: str) -> tuple[int, int]:
    """A size as (height, width): an int (square), "16" or "16x24" (height x
    width), or a (height, width) pair. InputError for anything else."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, str) and _PAIR.match(value):
        match = _PAIR.match(value)
        pair = (int(match[1]), int(match[2] or match[1]))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise InputError(
            f"occlusion: --{name} must be a size in pixels: N for a square, or HxW (height x width) "
            f"such as 16x24; got {value!r}"
        )
    if min(pair) < 1:
        raise InputError(f"occlusion: --{name} must be at least 1 pixel on each side (N or HxW), got {value!r}")
    return pair


def format_pair(pair: tuple[int, int]) -> int | str:
    """How a parsed size is recorded: an int when square, else "HxW"."""
    return pair[0] if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis; a last window flush with the edge is added
    when the stride does not land there, so the far edge is always occluded."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """Every window position of one input size: rows ``ys`` x columns ``xs``,
    each window ``window`` = (height, width) pixels."""

    ys: np.ndarray  # (gy,) window top rows
    xs: np.ndarray  # (gx,) window left columns
    window: tuple[int, int]
    size: tuple[int, int]  # (H, W) of the input

    @classmethod
    def build(cls, size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> "WindowGrid":
        ys = window_starts(size[0], window[0], stride[0])
        xs = window_starts(size[1], window[1], stride[1])
        return cls(np.asarray(ys, np.int64), np.asarray(xs, np.int64), window, size)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def boxes(self, flat_indices: np.ndarray | None = None) -> np.ndarray:
        """(n, 4) int64 boxes (y0, y1, x0, x1) of the given row-major grid
        positions (all positions when None)."""
        if flat_indices is None:
            flat_indices = np.arange(len(self.ys) * len(self.xs))
        rows, cols = np.divmod(np.asarray(flat_indices, np.int64), len(self.xs))
        y0, x0 = self.ys[rows], self.xs[cols]
        return np.stack([y0, y0 + self.window[0], x0, x0 + self.window[1]], axis=1)


def spread_to_pixels(grid: np.ndarray, grid_windows: WindowGrid) -> np.ndarray:
    """Each pixel's mean over the windows covering it (0 where no window covers
    it, which happens only when the stride exceeds the window).

    Summed-area bookkeeping instead of a loop over windows: every window adds
    its value at two corners and subtracts it at the other two of a difference
    array whose 2-D cumulative sum is the per-pixel total."""
    height, width = grid_windows.size
    wh, ww = grid_windows.window
    y0 = np.repeat(grid_windows.ys, len(grid_windows.xs))
    x0 = np.tile(grid_windows.xs, len(grid_windows.ys))
    values = np.asarray(grid, np.float64).reshape(-1)

    def accumulate(weights: np.ndarray) -> np.ndarray:
        diff = np.zeros((height + 1, width + 1), np.float64)
        np.add.at(diff, (y0, x0), weights)
        np.add.at(diff, (y0 + wh, x0), -weights)
        np.add.at(diff, (y0, x0 + ww), -weights)
        np.add.at(diff, (y0 + wh, x0 + ww), weights)
        return diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]

    total = accumulate(values)
    count = np.rint(accumulate(np.ones_like(values)))  # exact integers, cumsum rounding aside
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return out.astype(np.float32)
