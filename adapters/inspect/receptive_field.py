"""Receptive fields: which input pixels can change a unit of a layer.

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
geometry is checked once against perturbations outside a few units' boxes.

Front ends: :mod:`receptive_field_torch` (traces torch functions during one
forward) and :mod:`receptive_field_onnx` (walks the graph's nodes)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from cnnviz_core.errors import InputError, MethodWarning

EMPTY_LO = np.iinfo(np.int64).max  # an empty span: lo > hi (a position reading only padding)


@dataclasses.dataclass(frozen=True)
class Span:
    """Input pixel interval [lo[p], hi[p]] of each position p along one axis."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def identity(cls, size: int) -> "Span":
        positions = np.arange(size, dtype=np.int64)
        return cls(positions, positions.copy())

    @classmethod
    def full(cls, positions: int, image_size: int) -> "Span":
        """Every position depends on the whole axis (a global path)."""
        return cls(np.zeros(positions, np.int64), np.full(positions, image_size - 1, np.int64))

    def __len__(self) -> int:
        return len(self.lo)

    def gather(self, sources: np.ndarray) -> "Span":
        """Output position p reads positions ``sources[p, :]`` (-1: none, e.g.
        padding); its span is the union of theirs."""
        valid = (sources >= 0) & (sources < len(self))
        safe = np.where(valid, sources, 0)
        lo, hi = self.lo[safe], self.hi[safe]
        valid &= lo <= hi
        return Span(np.where(valid, lo, EMPTY_LO).min(axis=1), np.where(valid, hi, -1).max(axis=1))

    def union(self, other: "Span") -> "Span":
        return Span(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))


@dataclasses.dataclass(frozen=True)
class Field:
    """What one tensor depends on: spans of its last two axes (rows, cols), or
    ``None`` for a tensor without spatial layout that may read any pixel
    (after a global pool). ``lost``: an op on the way scrambled the layout, so
    the spans are not trustworthy."""

    rows: Span | None
    cols: Span | None
    lost: bool = False


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    """The receptive field of every position of a layer's (B, C, h, w) output
    in input pixels, and how it was found ("graph", "gradient" or "probe")."""

    rows: Span
    cols: Span
    method: str
    shape: tuple[int, ...] = ()  # the layer's output shape for one image, (1, C, h, w)

    def boxes(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """[y0, y1, x0, x1] (ends exclusive, clipped to the image) for
        positions (ys, xs) of any shape → (..., 4) int64."""
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        lo_y, hi_y = self.rows.lo[ys], self.rows.hi[ys]
        lo_x, hi_x = self.cols.lo[xs], self.cols.hi[xs]
        empty_y, empty_x = lo_y > hi_y, lo_x > hi_x  # a unit that reads only padding: an empty box at 0
        return np.stack([np.where(empty_y, 0, lo_y), np.where(empty_y, 0, hi_y + 1),
                         np.where(empty_x, 0, lo_x), np.where(empty_x, 0, hi_x + 1)], axis=-1)

    def describe(self) -> dict:
        """Size of the field at the centre unit and the step between units (input pixels)."""
        centre_y, centre_x = len(self.rows) // 2, len(self.cols) // 2
        box = self.boxes(np.array(centre_y), np.array(centre_x))
        return {
            "method": self.method,
            "positions": [len(self.rows), len(self.cols)],
            "centre_size": [int(box[1] - box[0]), int(box[3] - box[2])],
            "stride": [_step(self.rows), _step(self.cols)],
        }


def _step(span: Span) -> float:
    if len(span) < 2:
        return 0.0
    return float((span.lo[-1] + span.hi[-1] - span.lo[0] - span.hi[0]) / 2 / (len(span) - 1))


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
def receptive_field(adapter, layer: str, verify: bool = True) -> LayerGeometry:
    """Receptive fields of a layer's positions: from the geometry of the ops
    on the way (measured where an op scrambles it), checked against
    perturbations outside the boxes of a few units."""
    if adapter.kind == "torch":
        from . import receptive_field_torch as front
    elif adapter.kind == "onnx":
        from . import receptive_field_onnx as front
    else:
        raise InputError(f"receptive fields need a torch or ONNX model, not a {adapter.kind!r} adapter")
    field, shape = front.layer_field(adapter, layer)
    if shape is not None and len(shape) != 4:
        raise InputError(f"layer {layer!r} outputs shape {tuple(shape)}; a receptive field needs a (B, C, H, W) feature map "
                         "(choose a convolutional layer)")
    if field is not None and not field.lost and field.rows is not None:
        geometry = LayerGeometry(field.rows, field.cols, "graph", tuple(shape))
        if not verify:
            return geometry
        offender = outside_dependence(adapter, layer, geometry)
        if offender is None:
            return geometry
        warnings.warn(f"the receptive field computed from the layers of {adapter.name!r} misses pixels that change "
                      f"unit {offender} of {layer!r} (an op the geometry does not know?); measuring it instead",
                      MethodWarning, stacklevel=2)
    return front.measured_geometry(adapter, layer)


def outside_dependence(adapter, layer: str, geometry: LayerGeometry, seed: int = 0) -> tuple[int, int] | None:
    """Perturb every pixel outside a unit's box, for the first, centre and
    last units of the layer (so the first, centre and last row and column):
    none may change (all channels at that position). The first unit that
    does is returned."""
    height, width = adapter.config.input_size
    h, w = len(geometry.rows), len(geometry.cols)
    units = sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1)})
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, 3, height, width)).astype(np.float32)
    batch = np.repeat(base, len(units) + 1, axis=0)
    boxes = geometry.boxes(np.array([u[0] for u in units]), np.array([u[1] for u in units]))
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        keep = batch[i, :, y0:y1, x0:x1].copy()
        batch[i] = rng.normal(size=(3, height, width)).astype(np.float32)
        batch[i, :, y0:y1, x0:x1] = keep
    maps = adapter.activations(batch, [layer])[layer]
    scale = float(np.abs(maps[0]).max()) or 1.0
    for i, (y, x) in enumerate(units, start=1):
        # a few ulps of slack: some kernels sum in an order that depends on the whole input
        if float(np.abs(maps[i, :, y, x] - maps[0, :, y, x]).max()) > 1e-4 * scale:
            return (y, x)
    return None


def spans_from_support(support_rows: np.ndarray, support_cols: np.ndarray) -> tuple[Span, Span]:
    """(positions, input pixels) boolean tables → spans (first and last pixel
    each position depends on)."""
    def span(table):
        any_pixel = table.any(axis=1)
        lo = np.where(any_pixel, table.argmax(axis=1), EMPTY_LO)
        hi = np.where(any_pixel, table.shape[1] - 1 - table[:, ::-1].argmax(axis=1), -1)
        return Span(lo.astype(np.int64), hi.astype(np.int64))

    return span(support_rows), span(support_cols)
