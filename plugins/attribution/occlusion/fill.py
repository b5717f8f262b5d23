"""What an occluding window is set to: a constant in the model's normalized
input space, each image's per-channel mean, or the pixels of a Gaussian-blurred
copy of the image."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cnnviz_core import InputError
from cnnviz_core.toolkit import gaussian_blur

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

KEYWORDS = ("mean", "blur")


def parse_baseline(value) -> float | str:
    """A number, or one of the keywords; numbers given as text (the CLI) become floats."""
    if isinstance(value, bool):
        raise InputError(f"occlusion: --baseline must be a number, 'mean' or 'blur', got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower() in KEYWORDS:
        return value.strip().lower()
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"occlusion: --baseline must be a number (in the model's normalized input space), "
                f"'mean' (each image's per-channel mean) or 'blur' (a Gaussian-blurred copy); got {value!r}"
            ) from None
    if not math.isfinite(number):
        raise InputError(f"occlusion: --baseline must be finite, got {value!r}")
    return number


def make_fill(image: torch.Tensor, baseline: float | str, blur_sigma: float) -> torch.Tensor:
    """The (3, H, W) picture a window copies its pixels from."""
    import torch

    if baseline == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).contiguous()
    if baseline == "blur":
        return gaussian_blur(image, blur_sigma)
    return torch.full_like(image, float(baseline))
