"""Changed regions of a feature map, one box per occluding window, and the flat
indices that cut patches out of maps and paste them back.

Every window of a batch gets a box of the same size in a given map, so that
their patches stack into one tensor: the size is the largest any window needs,
and boxes at the border are shifted inwards (recomputing a few unchanged
pixels is harmless, the result is the same)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cnnviz_plugins.attribution.occlusion.incremental.ops import WindowedOp


@dataclasses.dataclass(frozen=True)
class Region:
    """Per window n, rows y[n]..y[n]+h and columns x[n]..x[n]+w of a (height, width) map."""

    y: np.ndarray
    x: np.ndarray
    h: int
    w: int
    height: int
    width: int

    @property
    def fraction(self) -> float:
        return self.h * self.w / (self.height * self.width)

    def take(self, start: int, stop: int) -> "Region":
        return dataclasses.replace(self, y=self.y[start:stop], x=self.x[start:stop])

    def same_as(self, other: "Region") -> bool:
        return (self.h, self.w) == (other.h, other.w) and np.array_equal(self.y, other.y) and np.array_equal(self.x, other.x)


def fitted(low_y, high_y, low_x, high_x, height: int, width: int) -> Region | None:
    """The common-size boxes covering [low, high) per window, clipped to the map;
    None when no window changes anything there."""
    low_y, high_y = np.maximum(low_y, 0), np.minimum(high_y, height)
    low_x, high_x = np.maximum(low_x, 0), np.minimum(high_x, width)
    h = int(np.max(high_y - low_y, initial=0))
    w = int(np.max(high_x - low_x, initial=0))
    if h <= 0 or w <= 0:
        return None
    # a window whose own box is empty gets any in-bounds box of the common size
    y = np.clip(low_y, 0, height - h)
    x = np.clip(low_x, 0, width - w)
    return Region(y.astype(np.int64), x.astype(np.int64), h, w, height, width)


def boxes_region(boxes: np.ndarray, height: int, width: int) -> Region:
    """The input region of windows (y0, y1, x0, x1) that share one size."""
    return fitted(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], height, width)


def through_window(region: Region, op: WindowedOp, out_hw: tuple[int, int]) -> Region | None:
    """Output pixels of a conv/pool whose window reads a changed input pixel. In
    padded coordinates, output o reads rows [o*s, o*s + span)."""
    bounds = []
    for start, size, axis in ((region.y, region.h, 0), (region.x, region.w, 1)):
        first = start + op.pad_before[axis]  # first and last changed row, padded
        last = first + size - 1
        span, stride = op.span[axis], op.stride[axis]
        low = -((span - 1 - first) // stride)  # ceil((first - span + 1) / stride)
        high = last // stride + 1
        bounds.append((low, high))
    (low_y, high_y), (low_x, high_x) = bounds
    return fitted(low_y, high_y, low_x, high_x, *out_hw)


def union(regions: list[Region]) -> Region:
    """Per window, the box covering all the given boxes (same map)."""
    first = regions[0]
    if all(r.same_as(first) for r in regions[1:]):
        return first
    low_y = np.min([r.y for r in regions], axis=0)
    high_y = np.max([r.y + r.h for r in regions], axis=0)
    low_x = np.min([r.x for r in regions], axis=0)
    high_x = np.max([r.x + r.w for r in regions], axis=0)
    return fitted(low_y, high_y, low_x, high_x, first.height, first.width)


def halo(region: Region, op: WindowedOp) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The padded-input box each output box reads: top-left corners and size."""
    h = (region.h - 1) * op.stride[0] + op.span[0]
    w = (region.w - 1) * op.stride[1] + op.span[1]
    return region.y * op.stride[0], region.x * op.stride[1], h, w


# -- flat indices -------------------------------------------------------------
# Maps are handled as (pixels, channels) matrices (channels-last), so cutting a
# patch is one index_select of whole rows and pasting one is one index_copy_.
def box_rows(y: np.ndarray, x: np.ndarray, h: int, w: int, row_length: int, device) -> torch.Tensor:
    """Row indices, in a map with ``row_length`` columns, of the pixels of each
    window's h x w box at (y, x); window-major, then row-major."""
    iy = np.arange(h)[None, :, None]
    ix = np.arange(w)[None, None, :]
    flat = (y[:, None, None] + iy) * row_length + (x[:, None, None] + ix)
    return torch.from_numpy(flat.reshape(-1)).to(device)


def paste_rows(inner_y, inner_x, inner_h: int, inner_w: int, outer_y, outer_x, outer_h: int, outer_w: int, device):
    """Where each window's inner box (a patch) lands in its stacked outer box
    (both in the same coordinates): destination rows in the (N*outer_h*outer_w)
    stack and, when part of the patch falls outside, the source rows to take
    (None: all of it, in order)."""
    n = len(inner_y)
    rel_y = (inner_y - outer_y)[:, None, None] + np.arange(inner_h)[None, :, None]
    rel_x = (inner_x - outer_x)[:, None, None] + np.arange(inner_w)[None, None, :]
    window = np.arange(n)[:, None, None]
    dest = (window * outer_h + rel_y) * outer_w + rel_x
    inside = (rel_y >= 0) & (rel_y < outer_h) & (rel_x >= 0) & (rel_x < outer_w)
    if inside.all():
        return torch.from_numpy(dest.reshape(-1)).to(device), None
    inside = np.broadcast_to(inside, dest.shape).reshape(-1)
    dest = dest.reshape(-1)[inside]
    source = np.flatnonzero(inside)
    return torch.from_numpy(dest).to(device), torch.from_numpy(source).to(device)
