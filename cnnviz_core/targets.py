"""What a method explains, one target per input:

- a class: its index (``285``) or a label name (``"Egyptian cat"``, ``ostrich``);
- ``top1`` (the default): each input's own top-1 class;
- a neuron of a layer, with one meaning in every method:
  ``layer:channel`` is the channel's MEAN over the spatial positions of its
  feature map (resolution independent: the same value at any input size),
  ``layer:channel@y,x`` the single unit at row y, column x of that map.

:func:`validate_targets` is the one check a method runs before any work: the
kinds it takes, and each neuron's layer, channel and position.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Collection, Sequence

import numpy as np

from .errors import TargetError

_NEURON = re.compile(r"^(?P<layer>[^@:]+):(?P<channel>\d+)(?:@(?P<y>\d+),(?P<x>\d+))?$")


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # "class", "top1" or "neuron"
    class_index: int | None = None
    layer: str | None = None
    channel: int | None = None
    position: tuple[int, int] | None = None  # (y, x) in the layer's feature map

    @classmethod
    def top1(cls) -> "Target":
        return cls("top1")

    def describe(self, labels: Sequence[str] | None = None) -> str:
        if self.kind == "top1":
            return "top1"
        if self.kind == "class":
            if labels is not None and self.class_index < len(labels):
                return f"{self.class_index} ({labels[self.class_index]})"
            return str(self.class_index)
        where = f"@{self.position[0]},{self.position[1]}" if self.position else ""
        return f"{self.layer}:{self.channel}{where}"

    def to_json(self):
        return dataclasses.asdict(self)


def parse_target(spec, num_classes: int | None = None, labels: Sequence[str] | None = None) -> Target:
    """Turn a user's target into a Target, checking class indices and label
    names against the model before any work is done."""
    if spec is None or isinstance(spec, Target):
        target = spec or Target.top1()
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        target = Target("class", class_index=int(spec))
    elif isinstance(spec, str):
        target = _parse_string(spec.strip(), labels)
    else:
        raise TargetError(f"target must be an int, a label name, 'top1' or 'layer:channel[@y,x]', got {spec!r}")
    if target.kind == "class" and num_classes is not None and not 0 <= target.class_index < num_classes:
        raise TargetError(
            f"class index {target.class_index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return target


def _parse_string(text: str, labels: Sequence[str] | None) -> Target:
    if text.lower() in ("", "top1", "top-1"):
        return Target.top1()
    if re.fullmatch(r"-?\d+", text):
        return Target("class", class_index=int(text))
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
        if target.kind == "class":
            classes[i] = target.class_index
        elif target.kind == "top1":
            classes[i] = int(np.argmax(logits[i]))
        else:
            raise TargetError(f"this method explains a class; got the neuron target {target.describe()}")
    return classes


KINDS = ("class", "top1", "neuron")
_WANTED = {"class": "a class index or label name", "top1": "top1", "neuron": "a neuron target layer:channel[@y,x]"}


def validate_targets(targets: Sequence[Target], accepts: Collection[str], method: str, adapter=None, advice: str = "") -> None:
    """Refuse, before any work, a target ``method`` cannot take: a kind outside
    ``accepts`` (a subset of :data:`KINDS`), or a neuron whose layer, channel or
    position does not exist in ``adapter``'s model at its input size. ``advice``
    ends the message for a refused kind (what to give instead, and why)."""
    unknown = set(accepts) - set(KINDS)
    if unknown:
        raise ValueError(f"accepts names unknown target kinds {sorted(unknown)}; use {KINDS}")
    for target in targets:
        if target.kind not in accepts:
            wanted = [_WANTED[kind] for kind in KINDS if kind in accepts]
            wanted_text = wanted[0] if len(wanted) == 1 else ", ".join(wanted[:-1]) + " or " + wanted[-1]
            got = {"class": "class ", "top1": "", "neuron": "the neuron target "}[target.kind] + target.describe()
            raise TargetError(f"{method} needs {wanted_text}; got {got}" + (f". {advice}" if advice else ""))
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
