"""LayerCAM (Jiang et al. 2021) as a cnnviz plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import GradientCAM

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch


class LayerCAM(GradientCAM):
    """LayerCAM: ReLU(Σ_k ReLU(∂score/∂A_k) ⊙ A_k), each position weighted by its own positive gradient."""

    name = "layercam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.relu(gradients)


@hookimpl
def cnnviz_methods():
    return [LayerCAM]
