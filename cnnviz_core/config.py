"""Preprocessing configuration of a model, frozen like timm's PretrainedCfg."""

from __future__ import annotations

import dataclasses
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How a raw RGB image in [0, 1] becomes the model's input tensor."""

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be (height, width), got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (RGB), got {value!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )

    @classmethod
    def from_timm(cls, pretrained_cfg: dict[str, Any]) -> "PreprocessConfig":
        size = pretrained_cfg.get("input_size", (3, 224, 224))  # timm resolves input_size, not test size
        return cls(
            input_size=tuple(size[-2:]),
            mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
            interpolation=pretrained_cfg.get("interpolation", "bilinear") or "bilinear",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ONNX metadata props (``model.metadata_props``) a model file may carry its
# preprocessing in: each value is JSON ("[0.5, 0.5, 0.5]", "[224, 224]",
# "\"bicubic\"" — or a bare word for the interpolation); a ``cnnviz.`` key
# wins over the plain one.
METADATA_KEYS = ("input_size", "mean", "std", "interpolation")
METADATA_PREFIX = "cnnviz."


def config_from_metadata(props: dict[str, str], source: str = "the model") -> dict[str, Any]:
    """The preprocessing settings found in a model's metadata props, by
    field name (only those present); ValueError naming a value that is not JSON."""
    import json

    found: dict[str, Any] = {}
    for field in METADATA_KEYS:
        key = METADATA_PREFIX + field if METADATA_PREFIX + field in props else field
        if key not in props:
            continue
        text = str(props[key]).strip()
        try:
            found[field] = json.loads(text)
        except json.JSONDecodeError:
            if field != "interpolation":
                raise ValueError(f"metadata prop {key!r} of {source} must be JSON (e.g. {_EXAMPLES[field]}), got {text!r}") from None
            found[field] = text
    return found


_EXAMPLES = {"input_size": "[224, 224]", "mean": "[0.485, 0.456, 0.406]", "std": "[0.229, 0.224, 0.225]"}


def parse_input_size(values: list[str] | tuple[str, ...] | str) -> tuple[int, int]:
    """``H W``, ``HxW`` or one ``N`` (square) → (height, width); ValueError otherwise."""
    parts = values.split() if isinstance(values, str) else list(values)
    if len(parts) == 1:
        parts = parts[0].lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        shown = values if isinstance(values, str) else " ".join(map(str, values))
        raise ValueError(f"an input size is H W, HxW or N (square) in pixels, got {shown!r}")
    return size
