"""Turn the user's inputs and targets into a synthesis method's items: the
starting pixels (when the method needs them), one target and one name each."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from . import images as imaging
from .errors import InputError, TargetError
from .synthesis import SynthesisMethod, check_pixels
from .targets import Target, parse_targets


def synthesis_items(method: SynthesisMethod, adapter, inputs: Any, target: Any) -> tuple[np.ndarray | None, list[Target], list[str]]:
    if method.needs_image:
        if inputs is None:
            raise InputError(f"{method.name} starts from an input image: give --image FILE (or inputs=...)")
        pixels, names = starting_pixels(inputs, adapter, method.name)
        targets = parse_targets(target, len(pixels), adapter.num_classes, adapter.labels)
        return pixels, targets, names
    if inputs is not None:
        raise InputError(f"{method.name} makes images from targets alone; give targets, not input images")
    if target is None:
        raise TargetError(f"{method.name} needs a target: a class index, a label name or layer:channel[@y,x] (several for a batch)")
    specs = list(target) if isinstance(target, (list, tuple)) else [target]
    targets = parse_targets(specs, len(specs), adapter.num_classes, adapter.labels)
    names = imaging.unique_names([slug(t, adapter.labels) for t in targets])
    return None, targets, names


def starting_pixels(inputs: Any, adapter, method: str) -> tuple[np.ndarray, list[str]]:
    """Files and PIL images are loaded and resized; arrays/tensors are taken
    as pixels in [0, 1] at the model's input size, and checked."""
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        array = inputs[None] if inputs.ndim == 3 else inputs
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{method}: an array input must hold float pixels in [0, 1], got {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        check_pixels(array, adapter.config.input_size, method)
        return array, [f"input{i}" for i in range(len(array))]
    batch, names = adapter.prepare(inputs)
    return imaging.denormalize(batch, adapter.config), names


def slug(target: Target, labels) -> str:
    """A file-name-safe name for a target: "class9_ostrich", "blocks.6:12"."""
    if target.kind == "class":
        label = labels[target.class_index].split(",")[0] if labels is not None and target.class_index < len(labels) else ""
        text = f"class{target.class_index}_{label}" if label else f"class{target.class_index}"
    else:
        text = target.describe()
    return re.sub(r"[^A-Za-z0-9._:@,-]+", "_", text).strip("_").replace(":", "-").replace("@", "-at-").replace(",", "-")
