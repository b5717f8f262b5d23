"""Shared pipeline of the gradient-weighted class activation maps (Grad-CAM and
its relatives): capture a layer's activations A and the gradient of the score
with respect to them, weight the channels, sum, ReLU, upsample. A subclass
overrides only :meth:`GradientCAM.cam_weights`; the default weights are
Grad-CAM's (the spatial mean of the gradient)."""

from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, param, validate_targets

from .hooks import frozen_parameters, gradient_root
from .scores import explained_scores

if TYPE_CHECKING:  # torch loads when a map is computed, not when a subclass is defined
    import torch


@dataclasses.dataclass
class CAMParams(AttributionParams):
    layer: str | None = param(None, "layer whose feature maps are weighted (default: the model's last spatial feature layer)")


class GradientCAM(AttributionMethod):
    """ReLU(Σ_k w_k ⊙ A_k) at ``--layer``, upsampled bilinearly to the input;
    w from :meth:`cam_weights`. ``extras["layer_map"]`` keeps the map at the
    layer's own resolution."""

    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})
    Params = CAMParams
    batch_hint = 16

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.default_layer()
        self.layer_module = self.adapter.get_layer(self.layer)
        self.layout = self.adapter.feature_layout(self.layer)  # token / channels-last layers read as (B, C, h, w)

    def check_targets(self, targets) -> None:
        # classes, and the targets scored from the whole output (callable, multilabel, region, detection)
        validate_targets(targets, {"class", "top1", "callable", "multilabel", "region", "detection"}, self.name,
                         advice="a neuron target needs a neuron method")

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Per-channel weights (b, K, 1, 1) — or per-position (b, K, h, w) —
        from the layer's activations and the score's gradient, both (b, K, h, w).
        By default Grad-CAM's: α_k, the spatial mean of ∂score/∂A_k."""
        return gradients.mean(dim=(2, 3), keepdim=True)

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        import torch
        import torch.nn.functional as F

        module = self.adapter.module
        # Parameters frozen and the layer output made a leaf: the graph starts
        # at the layer, so the backward stops there and computes no weight grads.
        with frozen_parameters(module), gradient_root(self.layer_module, self.layer, self.layout) as captured, torch.enable_grad():
            logits = module(self.adapter.tensor(inputs))
            if self.layer not in captured:
                raise self.error(f"layer {self.layer!r} did not run in the forward pass")
            activations = captured[self.layer]
            if activations.dim() != 4:
                raise self.error(
                    f"layer {self.layer!r} outputs shape {tuple(activations.shape)}; a (B, C, H, W) feature map is needed"
                )
            if activations.shape[0] != len(inputs):  # a detector's RoI pooling: one map per proposal
                raise self.error(f"layer {self.layer!r} outputs {activations.shape[0]} maps for {len(inputs)} input(s), "
                                 "not one per input (a detector's RoI layer?): give --layer a backbone layer")
            scores, classes = explained_scores(logits, targets, self.params.score, input_size=inputs.shape[-2:])
            (gradients,) = torch.autograd.grad(scores.sum(), activations)
        with torch.no_grad():
            weights = self.cam_weights(activations.detach(), gradients)
            layer_map = torch.relu((weights * activations.detach()).sum(dim=1, keepdim=True))
            cam = F.interpolate(layer_map, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return Attribution(
            maps=cam[:, 0].float().cpu().numpy(),
            classes=classes,
            scores=scores.detach().float().cpu().numpy(),
            # the map at the layer's own resolution, before upsampling
            extras={"layer_map": layer_map[:, 0].float().cpu().numpy()},
        )
