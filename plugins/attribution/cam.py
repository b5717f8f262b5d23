"""CAM (Zhou et al. 2016) as a cnnviz plugin. It needs the last feature maps
and the classifier's weights, not gradients, so it runs on ONNX models too."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, InputError, hookimpl, param
from cnnviz_core import resolve_classes, select_scores


@dataclasses.dataclass
class CAMParams(AttributionParams):
    score: str = param(
        "logit", "the score explained: CAM explains the class logit (prob is refused: the map sums to the logit, not to a probability)",
        choices=("logit", "prob"),
    )


class CAM(AttributionMethod):
    """CAM: Σ_k w_ck A_k, the classifier's weights on the last feature maps (GAP + linear heads only), not ReLU'd, upsampled bilinearly.

    The map at the feature layer's resolution is kept in ``extras["layer_map"]``;
    its spatial mean plus the classifier's bias is the class logit. Models with
    any other head are refused; Grad-CAM works on them."""

    name = "cam"
    requires = frozenset({Capability.ACTIVATIONS, Capability.WEIGHTS})
    Params = CAMParams
    batch_hint = 32

    @classmethod
    def check_params(cls, params) -> None:
        if params.score != "logit":
            raise InputError("cam: --score must be logit: CAM is defined on the class logit of a linear classifier")

    def setup(self) -> None:
        self.head = self.adapter.cam_head()  # refuses, suggesting Grad-CAM, a head that is not GAP + linear

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        import torch
        import torch.nn.functional as F

        layer = self.head.feature_layer
        logits, outputs = self.adapter.logits_and_activations(inputs, [layer])
        features = outputs[layer]
        if features.ndim != 4 or features.shape[1] != self.head.weight.shape[1]:
            raise self.error(
                f"feature layer {layer!r} outputs shape {tuple(features.shape)}; "
                f"({len(inputs)}, {self.head.weight.shape[1]}, H, W) is needed"
            )
        classes = resolve_classes(targets, logits)
        weights = torch.from_numpy(self.head.weight[classes])  # (b, K)
        layer_map = torch.einsum("bk,bkhw->bhw", weights, torch.from_numpy(np.asarray(features, dtype=np.float32)))
        maps = F.interpolate(layer_map[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return Attribution(
            maps=maps.numpy(),
            classes=classes,
            scores=select_scores(logits, classes, "logit"),
            extras={"layer_map": layer_map.numpy()},
        )


@hookimpl
def cnnviz_methods():
    return [CAM]
