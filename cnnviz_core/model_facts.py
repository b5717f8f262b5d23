"""What an adapter tells a method about its model: the public answers of the
adapter contract (:class:`cnnviz_core.ModelAdapter`). Plain data, numpy only,
the same whichever adapter answered."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from .errors import LayerNotFoundError, MethodError

EMPTY_LO = np.iinfo(np.int64).max  # an empty span: lo > hi (a position that reads only padding)
SHOWN_IN_ERRORS = 20  # layer names listed in a "no such layer" message
KIND_WORDS = {"conv": "convolution", "linear": "linear"}


# -- CAM ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CamHead:
    """A classifier head of global average pooling followed by one linear
    layer: ``logit_c = Σ_k weight[c, k] · mean(A_k) + bias[c]``, ``A`` the
    output of ``feature_layer`` (a name ``activations`` accepts)."""

    feature_layer: str
    weight: np.ndarray  # (classes, K) float32
    bias: np.ndarray | None  # (classes,) float32
    classifier: str  # the linear layer's name, for messages


GAP_LINEAR = "CAM needs a head of global average pooling followed by one linear layer"
USE_GRADCAM = "use gradcam, which needs no particular head"


def not_a_cam_head(model: str, why: str) -> MethodError:
    """The error of a ``cam_head`` question on a model whose head does not
    qualify: says why, and suggests Grad-CAM."""
    return MethodError("cam", f"{GAP_LINEAR}; in model {model!r} {why}. Instead, {USE_GRADCAM}.")


# -- weights -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class WeightLayer:
    """A convolution or linear layer with its weight. ``weight`` is read-only
    and shows the model's current weight (a torch adapter on the CPU hands out
    a view, not a copy: inside ``with_weights`` it shows the replacement)."""

    name: str  # what a user types; the key of ``with_weights``
    kind: str  # "conv" or "linear"
    weight_name: str  # the adapter's own name of the tensor (torch parameter, ONNX initializer)
    shape: tuple[int, ...]
    weight: np.ndarray
    groups: int = 1
    aliases: tuple[str, ...] = ()  # other names that find it (an ONNX node's name, its initializer's)

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases


class WeightLayerNotFoundError(LayerNotFoundError):
    """A name that names no layer of the asked kind; lists those that do."""

    def __init__(self, layer: str, kind: str, names: list[str]):
        self.layer = layer
        word = KIND_WORDS.get(kind, kind)
        close = [n for n in names if layer.lower() in n.lower()][:5]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        Exception.__init__(self, f"model has no {word} layer {layer!r}.{hint} Its {word} layers: {listing(names)}")


def listing(names: list[str]) -> str:
    """The first names, and how many there are in all."""
    shown = ", ".join(names[:SHOWN_IN_ERRORS]) or "none"
    return shown + (f" … ({len(names)} in all)" if len(names) > SHOWN_IN_ERRORS else "")


# -- receptive fields ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Span:
    """Input pixel interval [lo[p], hi[p]] of each position p along one axis
    (lo > hi: the position reads no pixel, only padding)."""

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

    @classmethod
    def from_support(cls, table: np.ndarray) -> "Span":
        """(positions, input pixels) boolean table → first and last pixel each position depends on."""
        any_pixel = table.any(axis=1)
        lo = np.where(any_pixel, table.argmax(axis=1), EMPTY_LO)
        hi = np.where(any_pixel, table.shape[1] - 1 - table[:, ::-1].argmax(axis=1), -1)
        return cls(lo.astype(np.int64), hi.astype(np.int64))

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

    def same_as(self, other: "Span") -> bool:
        return np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """The input pixels that can change each position of a layer's (B, C, h, w)
    output, and how they were found: "graph" (the geometry of the ops on the
    way), "gradient" (the support of input gradients) or "probe" (which
    activations change when input rows and columns are redrawn)."""

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


# -- forward runners -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ForwardRunner:
    """One way to run the model's forward pass on batches, for methods that
    run many (occlusion). ``forward(batch)`` returns (B, classes) float32
    logits as numpy. ``takes`` says what ``batch`` is: "numpy", a C-contiguous
    float32 (B, 3, H, W) array; or "torch", a float32 tensor on ``device``,
    channels-last when ``channels_last``. ``facts`` describe it for the
    result's record (an ONNX cache entry, onnxruntime's providers)."""

    name: str
    forward: Callable[[Any], np.ndarray]
    takes: str = "numpy"
    device: str = "cpu"
    channels_last: bool = False
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
