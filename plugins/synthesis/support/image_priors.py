"""Natural-image priors for images made by optimization, for batches of pixel
images in [0, 1], one value per item:

- Mahendran & Vedaldi (CVPR 2015, "Understanding Deep Image Representations by
  Inverting Them"): :func:`alpha_norm` and :func:`total_variation` with
  exponent β (isotropic, normalized by the typical pixel variation);
- :func:`anisotropic_total_variation`: the plain mean |difference| of
  neighbouring pixels, the penalty of Lucid-style feature visualization.

Mahendran & Vedaldi's two are balanced as the paper does: a pixel is measured against the typical
size B of a mean-subtracted natural-image pixel, and a neighbour difference
against the typical variation V = B / 6.5, and the sum is divided by the
number of pixel positions. A natural photograph then scores a few units on
each whatever its size (chelsea at 224 px: R_α ≈ 5 with α = 6, R_TV ≈ 3.9
with β = 2 and 1.5 with β = 1), to weigh against a feature loss that starts
near 1; noise scores far higher (R_TV ≈ 30 for the inversion's start).
Each prior returns one value per item, so items of a batch never interact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

# B: the paper's typical norm of a mean-subtracted RGB pixel, 80 on a 0-255
# scale, here on the [0, 1] scale of cnnviz's pixels.
PIXEL_NORM = 80.0 / 255.0
# V: the paper's typical difference between neighbouring pixels.
PIXEL_VARIATION = PIXEL_NORM / 6.5
# Keeps the gradient of |d|^β finite where a difference is exactly 0 and β < 2.
_EPSILON = 1e-8


def alpha_norm(pixels: torch.Tensor, alpha: float, center: Sequence[float]) -> torch.Tensor:
    """R_α(x) = 1 / (H·W·B^α) · Σ_v ‖x(v) − m‖^α per item, ‖·‖ the Euclidean norm
    of the pixel's colour vector and m the model's mean colour (the paper's
    images are mean-subtracted). Large α bounds the range of the pixels."""
    import torch

    mean = torch.as_tensor(center, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    squared = ((pixels - mean) / PIXEL_NORM).pow(2).sum(dim=1)  # (b, H, W)
    return (squared + _EPSILON).pow(alpha / 2).mean(dim=(1, 2))


def total_variation(pixels: torch.Tensor, beta: float) -> torch.Tensor:
    """R_V^β(x) = 1 / (H·W·V^β) · Σ_{u,v} ((x(u,v+1) − x(u,v))² + (x(u+1,v) − x(u,v))²)^{β/2}
    per item, the squared differences summed over the colour channels too.
    β = 1 is the classic total variation; β = 2 (the paper's default for CNN
    inversion) blurs less and avoids its spikes."""
    down = pixels[:, :, 1:, :-1] - pixels[:, :, :-1, :-1]
    right = pixels[:, :, :-1, 1:] - pixels[:, :, :-1, :-1]
    squared = ((down.pow(2) + right.pow(2)) / PIXEL_VARIATION**2).sum(dim=1)  # (b, H-1, W-1)
    return (squared + _EPSILON).pow(beta / 2).mean(dim=(1, 2))


def anisotropic_total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Per item (b,): the mean absolute difference between vertically
    neighbouring pixels plus that between horizontal neighbours (anisotropic
    L1 total variation, averaged so one weight fits every size)."""
    down = (pixels[:, :, 1:, :] - pixels[:, :, :-1, :]).abs().flatten(1).mean(1)
    right = (pixels[:, :, :, 1:] - pixels[:, :, :, :-1]).abs().flatten(1).mean(1)
    return down + right
