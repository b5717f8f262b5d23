"""HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for
faithful explanations of convolutional neural networks") as a cnnviz plugin,
written on the public toolkit's Grad-CAM pipeline.

Grad-CAM averages each channel's gradient over the positions before weighting
the channel; HiResCAM multiplies gradient and activation position by
position, ReLU(Σ_k ∂y/∂A_k ⊙ A_k), upsampled bilinearly to the input, so the
map shows where the layer's activations actually raise the score. Where the
gradient is the same at every position (a layer followed by global average
pooling and a linear head) the two are equal.
"""

from __future__ import annotations

import torch

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import GradientCAM


class HiResCAM(GradientCAM):
    """HiResCAM: ReLU(Σ_k ∂score/∂A_k ⊙ A_k), each position weighted by its own gradient, upsampled bilinearly."""

    name = "hirescam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        # Per position, not averaged: the toolkit sums weights ⊙ A over the
        # channels, applies the ReLU and upsamples (its --layer, --score too).
        return gradients


@hookimpl
def cnnviz_methods():
    return [HiResCAM]
