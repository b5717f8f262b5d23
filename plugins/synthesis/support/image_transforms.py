"""Transformation robustness for images made by optimization (Olah et al.,
Distill 2017): each step the model sees the image randomly shifted, scaled
and rotated, so the optimizer cannot win with a pattern that only works at one
exact pixel alignment (the high-frequency noise of plain gradient ascent). All
random draws come from the item's own generator. The penalties on the image
itself are in ``image_priors``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

GREY = 0.5  # what the picture shows where a transform uncovers its border


def random_affine(
    pixels: torch.Tensor,
    generators: list[torch.Generator],
    jitter: int = 0,
    scales: tuple[float, float] = (1.0, 1.0),
    rotate: float = 0.0,
) -> torch.Tensor:
    """Each item shifted by up to ``jitter`` pixels (integers, both axes),
    scaled by a factor drawn from [scales[0], scales[1]] and rotated by up to
    ``rotate`` degrees about the centre; uncovered areas are grey. One bilinear
    resampling per step does all three (the same as Lucid's pad, jitter, scale,
    rotate chain, cropped back to the input's size)."""
    import torch
    import torch.nn.functional as F

    if jitter == 0 and scales == (1.0, 1.0) and rotate == 0.0:
        return pixels
    count, _, height, width = pixels.shape
    thetas = []
    for generator in generators[:count]:
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        shift_y = math.floor(u[0] * (2 * jitter + 1)) - jitter
        shift_x = math.floor(u[1] * (2 * jitter + 1)) - jitter
        factor = scales[0] + (scales[1] - scales[0]) * u[2]
        angle = math.radians(rotate * (2 * u[3] - 1))
        thetas.append(_sampling_matrix(height, width, shift_y, shift_x, factor, angle))
    theta = torch.tensor(thetas, dtype=pixels.dtype, device=pixels.device)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    # Sample (pixels - grey) with zero padding: the border comes out grey.
    return F.grid_sample(pixels - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GREY


def _sampling_matrix(height: int, width: int, shift_y: float, shift_x: float, factor: float, angle: float) -> list[list[float]]:
    """affine_grid's 2x3 matrix: for each output position, where to read the
    input, in normalized coordinates (x, y in [-1, 1]). In pixels about the
    centre the forward map is p_out = s·R(angle)·p_in + shift, so the input is
    read at p_in = R(-angle)·(p_out - shift)/s; the normalized matrix is
    D⁻¹·A·D with D = diag(W/2, H/2), which keeps rotations round on
    non-square images."""
    cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
    half_w, half_h = width / 2.0, height / 2.0
    a = [[cos, sin], [-sin, cos]]  # R(-angle)/s acting on (x, y)
    shift = (-(a[0][0] * shift_x + a[0][1] * shift_y), -(a[1][0] * shift_x + a[1][1] * shift_y))
    return [
        [a[0][0], a[0][1] * half_h / half_w, shift[0] / half_w],
        [a[1][0] * half_w / half_h, a[1][1], shift[1] / half_h],
    ]
