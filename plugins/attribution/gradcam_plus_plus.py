"""Grad-CAM++ (Chattopadhay et al. 2018) as a cnnviz plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import GradientCAM

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++: channel weights Σ_ij α_ij ReLU(∂S/∂A_ij), α from second- and third-order terms (exp-score closed form)."""

    name = "gradcam_plus_plus"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        import torch

        # With S = exp(score), higher derivatives are powers of the first one:
        # α = g² / (2 g² + Σ_ab A_ab · g³); positions where that is 0/0 get 0.
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
        defined = denominator != 0
        alpha = torch.where(defined, squared / torch.where(defined, denominator, 1.0), 0.0)
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3), keepdim=True)


@hookimpl
def cnnviz_methods():
    return [GradCAMPlusPlus]
