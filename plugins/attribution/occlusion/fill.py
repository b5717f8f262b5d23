"""What an occluding window is set to: a constant in the model's normalized
input space, each image's per-channel mean, or the pixels of a Gaussian-blurred
copy of the image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnviz_core.errors import InputError

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


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) → the same blurred by a separable Gaussian of std ``sigma``
    pixels; edges replicated, so any image size works."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image.dtype).to(image.device)
    x = image[None].contiguous()
    channels = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x[0]


def make_fill(image: torch.Tensor, baseline: float | str, blur_sigma: float) -> torch.Tensor:
    """The (3, H, W) picture a window copies its pixels from."""
    if baseline == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).contiguous()
    if baseline == "blur":
        return gaussian_blur(image, blur_sigma)
    return torch.full_like(image, float(baseline))
