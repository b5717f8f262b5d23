"""EigenCAM (Muhammad & Yeasin 2020) as a cnnviz plugin: the projection of a
layer's activations on their first principal component. No gradients and no
class: one forward pass reading the layer, so it runs on ONNX models (where
the layer is readable) and on any model whose outputs are not class scores
(a detector's backbone, a segmentation network).

For one image the layer's output A (C, h, w) is read as h·w points in C
dimensions, M = A reshaped to (h·w, C); with M = U S Vᵀ the map is M v₁ (v₁
the first right singular vector), reshaped to (h, w) and upsampled bilinearly.

Choices, documented because peers differ:
- not centred by default, as in the paper (the SVD of the activations
  themselves: the first component is then the dominant direction of the
  features, which for non-negative activations is close to their mean);
  ``--center`` subtracts each channel's spatial mean first, as
  pytorch-grad-cam's ``get_2d_projection`` does;
- the sign of a singular vector is arbitrary: it is fixed so that the map
  correlates positively with the channels' mean activation (where the layer
  is active, the map is high);
- the map is raw (no ReLU, no scaling): its values are projections.

``extras["layer_map"]`` keeps the map at the layer's resolution and
``extras["explained_variance"]`` the share S₁² / Σ S² of the (centred or not)
activations' energy that the first component carries. Targets are ignored
apart from the class and score reported: EigenCAM is class-agnostic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, hookimpl, param, resolve_classes, select_scores


@dataclasses.dataclass
class EigenCAMParams(AttributionParams):
    layer: str | None = param(None, "layer whose activations are projected (default: the model's last spatial feature layer)")
    center: bool = param(False, "subtract each channel's spatial mean before the SVD (pytorch-grad-cam's choice); "
                                "the paper projects the activations themselves")


def first_component_map(activations: np.ndarray, center: bool = False) -> tuple[np.ndarray, float]:
    """(C, h, w) → the (h, w) projection on the first principal direction, sign
    fixed to correlate positively with the channel mean, and the share of
    energy that direction carries."""
    channels, height, width = activations.shape
    points = activations.reshape(channels, height * width).T.astype(np.float64)  # (h·w, C)
    if center:
        points = points - points.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(points, full_matrices=False)
    projection = points @ vt[0]
    mean_activation = activations.reshape(channels, -1).mean(axis=0)
    if np.dot(projection - projection.mean(), mean_activation - mean_activation.mean()) < 0:
        projection = -projection
    energy = float((singular**2).sum())
    share = float(singular[0] ** 2 / energy) if energy > 0 else 0.0
    return projection.reshape(height, width), share


class EigenCAM(AttributionMethod):
    """EigenCAM: the layer's activations projected on their first principal component (class-agnostic, no gradients)."""

    name = "eigencam"
    requires = frozenset({Capability.ACTIVATIONS})
    Params = EigenCAMParams
    batch_hint = 16

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.default_layer()
        self.adapter.check_layer(self.layer)

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        import torch
        import torch.nn.functional as F

        logits, outputs = self.adapter.logits_and_activations(inputs, [self.layer])
        activations = outputs[self.layer]  # token and channels-last layers already come as (B, C, h, w) maps (adapter contract)
        if activations.ndim != 4:
            raise self.error(f"layer {self.layer!r} outputs shape {activations.shape}; a (B, C, h, w) feature map is "
                             "needed: pick a convolutional layer (cnnviz models --layers MODEL lists them)")
        results = [first_component_map(a, self.params.center) for a in activations]
        layer_maps = np.stack([m for m, _ in results]).astype(np.float32)
        with torch.no_grad():
            maps = F.interpolate(torch.from_numpy(layer_maps)[:, None], size=inputs.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
        classes, scores = self.explained(np.asarray(logits), targets)
        return Attribution(maps=maps, classes=classes, scores=scores,
                           extras={"layer_map": layer_maps,
                                   "explained_variance": np.array([s for _, s in results], dtype=np.float32)})

    def explained(self, logits: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
        """The class and its score where the model outputs class logits; -1 and
        NaN otherwise (a detector's rows, a segmentation map): the map itself
        depends on no class."""
        if logits.ndim == 2 and logits.shape[1] == self.adapter.num_classes:
            classes = resolve_classes(targets, logits)
            return classes, select_scores(logits, classes, self.params.score)
        return np.full(len(logits), -1, dtype=np.int64), np.full(len(logits), np.nan, dtype=np.float32)


@hookimpl
def cnnviz_methods():
    return [EigenCAM]
