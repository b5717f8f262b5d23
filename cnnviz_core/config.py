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
