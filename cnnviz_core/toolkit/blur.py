"""A Gaussian blur for images as methods use them: occlusion's blurred fill,
the blurred baseline of integrated gradients."""

from __future__ import annotations

import math

import numpy as np


def gaussian_blur(images, sigma: float):
    """Blur (C, H, W) or (B, C, H, W) images, a torch tensor or a numpy array
    (returned as the same type), by a separable Gaussian of standard deviation
    ``sigma`` pixels: kernel radius 3σ, edges replicated, so any image size
    works. Blurring commutes with a per-channel normalization, so normalized
    inputs can be blurred directly."""
    import torch
    import torch.nn.functional as F

    is_array = isinstance(images, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) if is_array else images
    single = x.dim() == 3
    x = (x[None] if single else x).contiguous()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    columns = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), columns, groups=channels)
    x = x[0] if single else x
    return x.numpy() if is_array else x
