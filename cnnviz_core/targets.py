"""What a method explains: a class (index or label name), the top-1 class, or a
neuron (``layer:channel`` or ``layer:channel@y,x``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

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
    if specs is None or isinstance(specs, (str, int, np.integer, Target)):
        specs = [specs]
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
