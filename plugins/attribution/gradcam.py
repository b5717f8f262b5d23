"""Grad-CAM (Selvaraju et al. 2017) as a cnnviz plugin."""

from __future__ import annotations

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import GradientCAM


class GradCAM(GradientCAM):
    """Grad-CAM: ReLU(Σ_k α_k A_k), α_k the spatial mean of ∂score/∂A_k, upsampled bilinearly."""

    name = "gradcam"
    # cam_weights: the toolkit's default, Grad-CAM's α_k


@hookimpl
def cnnviz_methods():
    return [GradCAM]
