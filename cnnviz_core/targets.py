"""What a method explains, one target per input:

- a class: its index (``285``) or a label name (``"Egyptian cat"``, ``ostrich``);
- ``top1`` (the default): each input's own top-1 class;
- a neuron of a layer, with one meaning in every method:
  ``layer:channel`` is the channel's MEAN over the spatial positions of its
  feature map (resolution independent: the same value at any input size),
  ``layer:channel@y,x`` the single unit at row y, column x of that map;
- targets scored from the model's whole output (:data:`OUTPUT_KINDS`; the
  gradient methods built on ``cnnviz_core.toolkit`` take them, see
  ``toolkit.scores.explained_scores``):

  - a Python callable ``target=lambda outputs: ...`` given the model's output
    for the batch and returning one differentiable score per input, shape (B,);
  - ``multilabel:LABEL`` (:meth:`Target.multilabel`): the sigmoid of the
    label's logit, for heads trained with one sigmoid per label;
  - ``region:CLASS[@x0,y0,x1,y1]`` (:meth:`Target.region`, which also takes a
    boolean mask): the sum of CLASS's logits over a box or mask of a
    segmentation output (B, K, h, w) (Seg-Grad-CAM, Vinogradova et al. 2020);
    the whole map without a box;
  - ``detection:CLASS@x0,y0,x1,y1`` (:meth:`Target.detection`): for a detector
    (``cnnviz_adapters.DetectionModel``), max over its detections of CLASS of
    IoU(detection, box) × the detection's score.

  Boxes are (x0, y0, x1, y1) in pixels of the model's input, x1 and y1
  exclusive (torchvision's convention). A spec's prefix wins over a layer of
  that name (a layer called ``region`` cannot be given as ``region:3``).

:func:`validate_targets` is the one check a method runs before any work: the
kinds it takes, and each neuron's layer, channel and position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Callable, Collection, Sequence

import numpy as np

from .errors import TargetError

_NEURON = re.compile(r"^(?P<layer>[^@:]+):(?P<channel>\d+)(?:@(?P<y>\d+),(?P<x>\d+))?$")
_OUTPUT_SPEC = re.compile(r"^(?P<kind>multilabel|region|detection):(?P<cls>[^@]+?)(?:@(?P<box>[^@]*))?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # one of KINDS or OUTPUT_KINDS
    class_index: int | None = None
    layer: str | None = None
    channel: int | None = None
    position: tuple[int, int] | None = None  # (y, x) in the layer's feature map
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in input pixels
    mask: Any = dataclasses.field(default=None, compare=False, repr=False)  # (H, W) bool array, region targets
    function: Callable | None = dataclasses.field(default=None, compare=False, repr=False)  # callable targets

    @classmethod
    def top1(cls) -> "Target":
        return cls("top1")

    @classmethod
    def multilabel(cls, class_index: int) -> "Target":
        """The sigmoid of ``class_index``'s logit (a multi-label head)."""
        return cls("multilabel", class_index=_index(class_index))

    @classmethod
    def region(cls, class_index: int, box=None, mask=None) -> "Target":
        """Sum of ``class_index``'s logits of a segmentation output over
        ``box`` (x0, y0, x1, y1) or ``mask`` ((H, W) booleans at the input's
        size or the output's), or over the whole map when neither is given."""
        if box is not None and mask is not None:
            raise TargetError("a region target takes a box or a mask, not both")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim != 2 or not mask.any():
                raise TargetError(f"a region mask must be a 2-D (H, W) array with at least one position set, "
                                  f"got shape {mask.shape}{' with none set' if mask.ndim == 2 else ''}")
            mask = mask.astype(bool)
            mask.setflags(write=False)
        return cls("region", class_index=_index(class_index), box=None if box is None else _box(box), mask=mask)

    @classmethod
    def detection(cls, class_index: int, box) -> "Target":
        """A detector's object: its best-matching detection of ``class_index``
        scored IoU(detection, ``box``) × its score."""
        return cls("detection", class_index=_index(class_index), box=_box(box))

    @classmethod
    def scored_by(cls, function: Callable) -> "Target":
        """``function(outputs)`` → one score per input, shape (B,)."""
        if not callable(function):
            raise TargetError(f"a callable target must be callable, got {type(function).__name__}")
        return cls("callable", function=function)

    def describe(self, labels: Sequence[str] | None = None) -> str:
        if self.kind == "top1":
            return "top1"
        if self.kind == "class":
            if labels is not None and self.class_index < len(labels):
                return f"{self.class_index} ({labels[self.class_index]})"
            return str(self.class_index)
        if self.kind == "callable":
            return f"callable:{getattr(self.function, '__qualname__', type(self.function).__name__)}"
        if self.kind in OUTPUT_KINDS:
            where = "@" + ",".join(f"{v:g}" for v in self.box) if self.box is not None else ""
            if self.mask is not None:  # its size and a digest: two masks name two targets
                digest = hashlib.sha1(repr(self.mask.shape).encode() + np.packbits(self.mask).tobytes()).hexdigest()[:8]
                where = f"@mask{int(self.mask.sum())}px-{digest}"
            return f"{self.kind}:{self.class_index}{where}"
        where = f"@{self.position[0]},{self.position[1]}" if self.position else ""
        return f"{self.layer}:{self.channel}{where}"

    def to_json(self):
        """JSON-safe: a callable by its name, a mask by its shape and size."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("mask", "function")}
        if self.mask is not None:
            record["mask"] = {"shape": list(self.mask.shape), "positions": int(self.mask.sum())}
        if self.function is not None:
            record["function"] = self.describe()[len("callable:"):]
        return record


def _index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TargetError(f"a class index must be a non-negative int, got {value!r}")
    return int(value)


def _box(values) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TargetError(f"a box is four numbers x0,y0,x1,y1 in input pixels, got {values!r}") from None
    if len(box) != 4 or not all(np.isfinite(box)) or min(box) < 0 or not (box[0] < box[2] and box[1] < box[3]):
        raise TargetError(f"a box is four finite numbers x0,y0,x1,y1 in input pixels with 0 <= x0 < x1 and "
                          f"0 <= y0 < y1, got {values!r}")
    return box


def parse_target(spec, num_classes: int | None = None, labels: Sequence[str] | None = None) -> Target:
    """Turn a user's target into a Target, checking class indices and label
    names against the model before any work is done."""
    if spec is None or isinstance(spec, Target):
        target = spec or Target.top1()
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        target = Target("class", class_index=int(spec))
    elif isinstance(spec, str):
        target = _parse_string(spec.strip(), labels)
    elif callable(spec):
        target = Target.scored_by(spec)
    else:
        raise TargetError(f"target must be an int, a label name, 'top1', 'layer:channel[@y,x]', 'multilabel:LABEL', "
                          f"'region:CLASS[@x0,y0,x1,y1]', 'detection:CLASS@x0,y0,x1,y1' or a callable, got {spec!r}")
    # a detector's classes are its labels, not the width of its output rows: not checked here
    if target.class_index is not None and target.kind != "detection" and num_classes is not None and not 0 <= target.class_index < num_classes:
        raise TargetError(
            f"class index {target.class_index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return target


def _parse_string(text: str, labels: Sequence[str] | None) -> Target:
    if text.lower() in ("", "top1", "top-1"):
        return Target.top1()
    if re.fullmatch(r"-?\d+", text):
        return Target("class", class_index=int(text))
    output = _OUTPUT_SPEC.match(text)
    if output:
        return _parse_output_target(output, labels)
    match = _NEURON.match(text)
    if match and (labels is None or text not in labels):
        position = (int(match["y"]), int(match["x"])) if match["y"] is not None else None
        return Target("neuron", layer=match["layer"], channel=int(match["channel"]), position=position)
    if labels is None:
        raise TargetError(f"target {text!r} is a label name but this model has no labels; give a class index")
    wanted = text.lower()
    for index, label in enumerate(labels):
        # ImageNet labels list synonyms: "ostrich, Struthio camelus" answers to "ostrich".
        if wanted == label.lower() or wanted in (part.strip().lower() for part in label.split(",")):
            return Target("class", class_index=index)
    close = [label for label in labels if text.lower() in label.lower()][:5]
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    raise TargetError(f"unknown label {text!r}.{hint} Use a class index or an exact label name.")


def _parse_output_target(match: re.Match, labels: Sequence[str] | None) -> Target:
    kind, box = match["kind"].lower(), match["box"]
    named = _parse_string(match["cls"].strip(), labels)
    if named.kind != "class":
        raise TargetError(f"{kind}: targets name a class (an index or a label name), got {match['cls']!r}")
    if box is not None:
        box = [part for part in box.split(",")]
    if kind == "multilabel":
        if box is not None:
            raise TargetError(f"a multilabel target takes no box: give multilabel:{match['cls']}")
        return Target.multilabel(named.class_index)
    if kind == "detection" and box is None:
        raise TargetError(f"a detection target needs the object's box: detection:{match['cls']}@x0,y0,x1,y1 in input pixels")
    if kind == "region":
        return Target.region(named.class_index, box=box)
    return Target.detection(named.class_index, box)


def parse_targets(specs, batch: int, num_classes: int | None, labels) -> list[Target]:
    """One target per input: a single spec applies to all inputs."""
    if specs is None or isinstance(specs, (str, int, np.integer, Target)) or not hasattr(specs, "__iter__"):
        specs = [specs]  # one spec for all inputs; a non-iterable (1.5) is refused by parse_target
    specs = list(specs)
    if len(specs) == 1:
        specs = specs * batch
    if len(specs) != batch:
        raise TargetError(f"got {len(specs)} targets for {batch} inputs: give one target, or one per input")
    return [parse_target(s, num_classes, labels) for s in specs]


def resolve_classes(targets: Sequence[Target], logits: np.ndarray) -> np.ndarray:
    """Class index per input, top-1 taken from the given logits."""
    classes = np.empty(len(targets), dtype=np.int64)
    for i, target in enumerate(targets):
        if target.kind in ("class", "multilabel", "region", "detection"):
            classes[i] = target.class_index
        elif target.kind == "callable":
            classes[i] = -1  # the function names no class
        elif target.kind == "top1":
            classes[i] = int(np.argmax(logits[i]))
        else:
            raise TargetError(f"this method explains a class; got the neuron target {target.describe()}")
    return classes


KINDS = ("class", "top1", "neuron")
# Targets scored from the model's whole output (toolkit.scores.explained_scores); a method opts in by naming them.
OUTPUT_KINDS = ("callable", "multilabel", "region", "detection")
_WANTED = {"class": "a class index or label name", "top1": "top1", "neuron": "a neuron target layer:channel[@y,x]",
           "callable": "a callable target", "multilabel": "a multilabel:LABEL target",
           "region": "a region:CLASS[@x0,y0,x1,y1] target", "detection": "a detection:CLASS@x0,y0,x1,y1 target"}
_OUTPUT_ADVICE = ("targets scored from the model's whole output are taken by the gradient methods built on "
                  "cnnviz_core.toolkit (gradcam, gradcam_plus_plus, layercam, saliency, guided_backprop, deconvnet), "
                  "and detection targets by drise")


def validate_targets(targets: Sequence[Target], accepts: Collection[str], method: str, adapter=None, advice: str = "") -> None:
    """Refuse, before any work, a target ``method`` cannot take: a kind outside
    ``accepts`` (a subset of :data:`KINDS` and :data:`OUTPUT_KINDS`), or a neuron whose layer, channel or
    position does not exist in ``adapter``'s model at its input size. ``advice``
    ends the message for a refused kind (what to give instead, and why)."""
    unknown = set(accepts) - set(KINDS) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"accepts names unknown target kinds {sorted(unknown)}; use {KINDS + OUTPUT_KINDS}")
    for target in targets:
        if target.kind not in accepts:
            wanted = [_WANTED[kind] for kind in KINDS + OUTPUT_KINDS if kind in accepts]
            wanted_text = wanted[0] if len(wanted) == 1 else ", ".join(wanted[:-1]) + " or " + wanted[-1]
            got = {"class": "class ", "top1": "", "neuron": "the neuron target "}.get(target.kind, "") + target.describe()
            why = _OUTPUT_ADVICE if target.kind in OUTPUT_KINDS else advice
            raise TargetError(f"{method} needs {wanted_text}; got {got}" + (f". {why}" if why else ""))
    neurons = [t for t in targets if t.kind == "neuron"]
    if neurons:
        if adapter is None:
            raise ValueError("validate_targets needs the adapter to check neuron targets")
        _check_neurons(neurons, adapter)


def _check_neurons(neurons: Sequence[Target], adapter) -> None:
    """Layer names, channels and positions against the layers' output shapes at
    the model's input size."""
    for target in neurons:
        adapter.check_layer(target.layer)
    shapes = adapter.layer_shapes(sorted({t.layer for t in neurons}))
    for target in neurons:
        shape = shapes.get(target.layer)
        if shape is None or len(shape) < 2:
            raise TargetError(f"layer {target.layer!r} has no channel dimension (output {shape}); pick another layer")
        if target.channel >= shape[1]:
            raise TargetError(
                f"layer {target.layer!r} has {shape[1]} channels (0..{shape[1] - 1}); channel {target.channel} is out of range"
            )
        if target.position is not None:
            if len(shape) != 4:
                raise TargetError(f"layer {target.layer!r} has no spatial map (output {shape}); drop @y,x")
            y, x = target.position
            if not (y < shape[2] and x < shape[3]):
                raise TargetError(f"position {y},{x} is outside layer {target.layer!r}'s {shape[2]}x{shape[3]} map")
