"""Turn the user's inputs and targets into a synthesis method's items: the
starting pixels (when the method needs them), one target and one name each."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from . import images as imaging, pixel_arrays
from .errors import InputError, TargetError
from .synthesis import SynthesisMethod, check_pixels
from .targets import Target, parse_targets


def synthesis_items(method: SynthesisMethod, adapter, inputs: Any, target: Any,
                    normalized: bool | None = None) -> tuple[np.ndarray | None, list[Target], list[str]]:
    if method.needs_image:
        if inputs is None:
            raise InputError(f"{method.name} starts from an input image: give --image FILE (or inputs=...)")
        pixels, names = starting_pixels(inputs, adapter, method.name, normalized)
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


def starting_pixels(inputs: Any, adapter, method: str, normalized: bool | None = None) -> tuple[np.ndarray, list[str]]:
    """The starting images as (B, 3, H, W) pixels in [0, 1] at the model's
    input size. Every raw form attribution takes is taken here the same way
    (files, ``skimage:NAME``, PIL images, uint8 arrays and tensors, float
    pixels with ``normalized=False``: resized like files); a normalized batch
    (``normalized=True`` or from :func:`cnnviz_core.preprocess`) is turned
    back into pixels. An undeclared float (B, 3, H, W) array is the pixels
    themselves: in [0, 1], at the model's size, used exactly."""
    found = pixel_arrays.as_array(inputs)
    if found is not None and pixel_arrays.role(found[0], normalized, f"{method}: the input") == "model":
        array = found[0][None] if found[0].ndim == 3 else found[0]
        array = np.ascontiguousarray(array, dtype=np.float32)
        height, width = adapter.config.input_size
        if tuple(array.shape[-2:]) != (height, width):
            raise InputError(f"{method}: a float (B, 3, H, W) array is taken as pixels at the model's input size, "
                             f"{height}x{width}, got {array.shape[-2]}x{array.shape[-1]}: pass normalized=False to have "
                             "raw pixels resized, or give files, PIL images or uint8 arrays")
        check_pixels(array, adapter.config.input_size, method)
        return array, [f"input{i}" for i in range(len(array))]
    batch, names = adapter.prepare(inputs) if normalized is None else adapter.prepare(inputs, normalized=normalized)
    return imaging.denormalize(batch, adapter.config), names


def slug(target: Target, labels) -> str:
    """A file-name-safe name for a target: "class9_ostrich", "blocks.6:12"."""
    if target.kind == "class":
        label = labels[target.class_index].split(",")[0] if labels is not None and target.class_index < len(labels) else ""
        text = f"class{target.class_index}_{label}" if label else f"class{target.class_index}"
    else:
        text = target.describe()
    return re.sub(r"[^A-Za-z0-9._:@,-]+", "_", text).strip("_").replace(":", "-").replace("@", "-at-").replace(",", "-")
