"""Grad-CAM (Selvaraju et al. 2017) as a cnnviz plugin."""

from __future__ import annotations

import torch

from cnnviz_core import hookimpl

from cnnviz_core.toolkit.gradient_cam import GradientCAM


class GradCAM(GradientCAM):
    """Grad-CAM: ReLU(Σ_k α_k A_k), α_k the spatial mean of ∂score/∂A_k, upsampled bilinearly."""

    name = "gradcam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3), keepdim=True)


@hookimpl
def cnnviz_methods():
    return [GradCAM]
