"""Receptive-field geometry shared by the torch and ONNX adapters: which
input pixels can change a unit of a tensor.

Geometry is propagated through the model, tensor by tensor, as one table per
spatial axis: position ``p`` of a tensor's axis depends on input pixels
``lo[p] .. hi[p]`` (inclusive) along that axis. Every op maps each of its
output positions to the input positions it reads (a window for convolution and
pooling, a shift for padding, the position itself for element-wise ops, all
positions for a global pool), and a unit's span is the union of the spans of
those positions — so where paths branch and merge (residual blocks) the
result is the union over paths, the theoretical receptive field, already
clipped to the image (padding reads no pixel).

A tensor whose layout an op scrambles (transpose of the spatial axes,
flattening followed by reshaping, ops the tracer does not know) is marked
*lost*; a layer with lost geometry gets its receptive field measured instead
(torch: the support of input gradients; ONNX: a perturbation probe). Computed
geometry is checked once against perturbations outside a few units' boxes
(:func:`receptive_field`).

Front ends: :mod:`cnnviz_adapters.torch_model.receptive_field` (traces torch
functions during one forward) and :mod:`cnnviz_adapters.onnx_model.receptive_field`
(walks the graph's nodes)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np

from cnnviz_core import MethodWarning
from cnnviz_core.errors import InputError
from cnnviz_core.model_facts import ReceptiveField, Span
from cnnviz_core.model_probes import outside_dependence


@dataclasses.dataclass(frozen=True)
class Field:
    """What one tensor depends on: spans of its last two axes (rows, cols), or
    ``None`` for a tensor without spatial layout that may read any pixel
    (after a global pool). ``lost``: an op on the way scrambled the layout, so
    the spans are not trustworthy."""

    rows: Span | None
    cols: Span | None
    lost: bool = False


# -- source tables of the ops ------------------------------------------------
def window_sources(out_size: int, in_size: int, kernel: int, stride: int, pad_begin: int, dilation: int = 1) -> np.ndarray:
    """Convolution and pooling: output p reads p·stride − pad + t·dilation."""
    taps = np.arange(out_size)[:, None] * stride - pad_begin + np.arange(kernel)[None, :] * dilation
    return np.where((taps >= 0) & (taps < in_size), taps, -1)


def same_sources(size: int) -> np.ndarray:
    return np.arange(size)[:, None]


def aligned_sources(out_size: int, in_size: int) -> np.ndarray | None:
    """Element-wise ops: same size, broadcast from 1, or reduced to 1; None
    when the sizes do not line up (the layout changed)."""
    if out_size == in_size:
        return same_sources(out_size)
    if in_size == 1:
        return np.zeros((out_size, 1), np.int64)
    if out_size == 1:
        return np.arange(in_size)[None, :]
    return None


def adaptive_sources(out_size: int, in_size: int) -> np.ndarray:
    """Adaptive pooling: bin p covers floor(p·n/m) .. ceil((p+1)·n/m) − 1."""
    starts = (np.arange(out_size) * in_size) // out_size
    ends = -((-(np.arange(out_size) + 1) * in_size) // out_size)
    width = int((ends - starts).max())
    taps = starts[:, None] + np.arange(width)[None, :]
    return np.where(taps < ends[:, None], taps, -1)


def resize_sources(out_size: int, in_size: int) -> np.ndarray:
    """Interpolation, conservatively: output p reads at most the input
    positions within two kernel widths (one at upsampling) of its centre
    (p + ½)·n/m − ½, widened by a pixel — which covers nearest, linear, cubic
    and area modes, antialiased or not, with or without aligned corners.
    Taps past the edge read the edge pixel."""
    scale = in_size / out_size
    centre = (np.arange(out_size) + 0.5) * scale - 0.5
    reach = 2 * max(scale, 1.0) + 1
    first = np.floor(centre - reach).astype(np.int64)
    width = int(np.ceil(2 * reach)) + 2
    return np.clip(first[:, None] + np.arange(width)[None, :], 0, in_size - 1)


def pad_sources(out_size: int, in_size: int, begin: int, mode: str) -> np.ndarray:
    """Padding (negative = cropping): output p shows input p − begin, or a
    mirrored, clamped or wrapped position, or nothing (constant)."""
    source = np.arange(out_size) - begin
    if mode in ("replicate", "edge"):
        source = np.clip(source, 0, in_size - 1)
    elif mode == "reflect":
        period = max(2 * (in_size - 1), 1)
        source = np.abs(np.mod(source, period))
        source = np.where(source >= in_size, period - source, source)
    elif mode in ("circular", "wrap"):
        source = np.mod(source, in_size)
    else:
        source = np.where((source >= 0) & (source < in_size), source, -1)
    return source[:, None]


def same_padding(in_size: int, kernel: int, stride: int, dilation: int, lower: bool = False) -> int:
    """Begin padding of "same" convolution (TensorFlow / ONNX SAME_UPPER puts
    the odd pixel at the end; SAME_LOWER at the beginning)."""
    out_size = math.ceil(in_size / stride)
    total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total - total // 2 if lower else total // 2


# -- fields --------------------------------------------------------------------
def input_field(height: int, width: int) -> Field:
    return Field(Span.identity(height), Span.identity(width))


def spatial_field(field: Field, out_h: int, out_w: int, image: tuple[int, int]) -> tuple[Span, Span]:
    """The field's spans, a global field spread over an (out_h, out_w) map."""
    if field.rows is None:
        return Span.full(out_h, image[0]), Span.full(out_w, image[1])
    return field.rows, field.cols


def union_fields(fields: list[Field]) -> Field:
    rows = cols = None
    lost = any(f.lost for f in fields)
    for field in fields:
        if field.rows is None:
            continue
        rows = field.rows if rows is None else rows.union(field.rows)
        cols = field.cols if cols is None else cols.union(field.cols)
    if rows is None:
        return Field(None, None, lost)
    return Field(rows, cols, lost)


def aligned_field(inputs: list[tuple[Field, tuple[int, ...]]], out_shape: tuple[int, ...], image: tuple[int, int],
                  reduction: bool = False) -> Field:
    """An op that keeps positions (element-wise, channel-wise, broadcasting,
    reductions to 1): each input's spans aligned to the output's last two
    axes, then their union. Outputs without two spatial axes become global
    (exact after a reduction or from a 1×1 map; lost otherwise)."""
    if len(out_shape) < 3:
        spatial = [shape for field, shape in inputs if field.rows is not None and len(shape) >= 3 and shape[-1] * shape[-2] > 1]
        return Field(None, None, any(f.lost for f, _ in inputs) or (bool(spatial) and not reduction))
    out_h, out_w = out_shape[-2:]
    aligned = []
    for field, shape in inputs:
        if field.rows is None:
            aligned.append(Field(Span.full(out_h, image[0]), Span.full(out_w, image[1]), field.lost))
            continue
        if len(shape) < 3:
            return lost_field(out_shape, image)
        row_sources, col_sources = aligned_sources(out_h, shape[-2]), aligned_sources(out_w, shape[-1])
        if row_sources is None or col_sources is None:
            return lost_field(out_shape, image)
        aligned.append(Field(field.rows.gather(row_sources), field.cols.gather(col_sources), field.lost))
    return union_fields(aligned)


def lost_field(out_shape: tuple[int, ...], image: tuple[int, int]) -> Field:
    if len(out_shape) >= 3:
        return Field(Span.full(out_shape[-2], image[0]), Span.full(out_shape[-1], image[1]), True)
    return Field(None, None, True)


def window_field(field: Field, in_shape, out_shape, image, kernel, stride, pad_begin, dilation) -> Field:
    """Convolution / pooling over the last two axes; the per-axis arguments
    are (rows, cols) pairs."""
    rows, cols = spatial_field(field, in_shape[-2], in_shape[-1], image)
    return Field(
        rows.gather(window_sources(out_shape[-2], in_shape[-2], kernel[0], stride[0], pad_begin[0], dilation[0])),
        cols.gather(window_sources(out_shape[-1], in_shape[-1], kernel[1], stride[1], pad_begin[1], dilation[1])),
        field.lost,
    )


def sources_field(field: Field, in_shape, out_shape, image, row_sources, col_sources) -> Field:
    rows, cols = spatial_field(field, in_shape[-2], in_shape[-1], image)
    return Field(rows.gather(row_sources), cols.gather(col_sources), field.lost)


# -- the receptive field of a layer --------------------------------------------
def receptive_field(adapter, layer: str, traced: tuple[Field | None, tuple[int, ...] | None],
                    measure: Callable[[], ReceptiveField], verify: bool = True) -> ReceptiveField:
    """A layer's receptive field from its traced ``(field, shape)``: the
    geometry when it is intact, checked (``verify``) against perturbations
    outside the boxes of a few units; ``measure()`` where the geometry was
    lost or the check fails."""
    field, shape = traced
    if shape is not None and len(shape) != 4:
        raise InputError(f"layer {layer!r} outputs shape {tuple(shape)}; a receptive field needs a (B, C, H, W) feature map "
                         "(choose a convolutional layer)")
    if field is not None and not field.lost and field.rows is not None:
        geometry = ReceptiveField(field.rows, field.cols, "graph", tuple(shape))
        if not verify:
            return geometry
        offender = outside_dependence(adapter, layer, geometry)
        if offender is None:
            return geometry
        warnings.warn(f"the receptive field computed from the layers of {adapter.name!r} misses pixels that change "
                      f"unit {offender} of {layer!r} (an op the geometry does not know?); measuring it instead",
                      MethodWarning, stacklevel=3)
    return measure()
