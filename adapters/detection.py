"""Detectors as models cnnviz can run: :class:`DetectionModel` wraps a
torchvision detector (Faster R-CNN, RetinaNet, SSD / SSDlite, or any module
that takes a list of (3, H, W) images and returns, in eval mode, one dict of
``boxes``, ``scores`` and ``labels`` per image) so that it takes a (B, 3, H, W)
batch and returns one tensor: (B, N, 6) rows ``(x0, y0, x1, y1, score,
label)``, the N highest-scoring detections per image, padded with zero rows.

Why a tensor: every adapter question (``logits``, forward runners, ONNX
export) is asked of a module that returns one tensor. The rows stay
differentiable with respect to the input for the kept detections (torchvision's
postprocessing indexes the scores and decoded boxes, it does not detach them),
so a ``detection:CLASS@x0,y0,x1,y1`` target (``toolkit.scores.detection_score``:
the best-matching detection's IoU × score) gives Grad-CAM and the input-gradient
methods a score to explain, and D-RISE reads the same rows forward-only.

Its ONNX export is refused (:data:`ONNX_REFUSAL` says why); a detector written
without data-dependent steps exports like any model, and D-RISE runs on its
ONNX copy.

Torchvision's detectors normalize and resize internally: give them pixels in
[0, 1] (mean 0, std 1; :func:`detection_options`). CAM methods need
``layer=`` on a backbone layer (Faster R-CNN's default spatial layer would be
its RoI pooling, whose batch is the proposals, not the images)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnviz_core.errors import InputError, ModelLoadError

ROW = ("x0", "y0", "x1", "y1", "score", "label")
ONNX_REFUSAL = (
    "a wrapped torchvision detector cannot be exported to ONNX faithfully: the tracer fixes its data-dependent "
    "steps (the per-image loop over the batch, score filtering, non-maximum suppression, the number of detections) "
    "at the example image, so the copy returns wrong detections on other images (an SSDlite copy exported with a "
    "fixed batch of 1 differed from torch by up to 88 pixels); run drise and the gradient methods on the torch model"
)


class DetectionModel(nn.Module):
    """(B, 3, H, W) pixels in [0, 1] → (B, max_detections, 6) detection rows."""

    def __init__(self, detector: nn.Module, max_detections: int = 100, num_classes: int | None = None):
        super().__init__()
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
            raise InputError(f"DetectionModel: max_detections must be an int of at least 1, got {max_detections!r}")
        self.detector = detector
        self.max_detections = int(max_detections)
        self.num_classes = int(num_classes) if num_classes is not None else class_count(detector)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            raise InputError(ONNX_REFUSAL)
        found = self.detector(list(images))
        rows = []
        for detections in found:
            boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
            order = scores.argsort(descending=True)[: self.max_detections]
            row = torch.cat([boxes[order], scores[order, None], labels[order, None].to(boxes.dtype)], dim=1)
            padding = row.new_zeros(self.max_detections - len(row), 6)
            rows.append(torch.cat([row, padding]))
        return torch.stack(rows)


def class_count(detector: nn.Module) -> int:
    """The detector's number of classes (background included, as torchvision
    counts them), read from its head."""
    heads = (
        ("roi_heads", "box_predictor", "cls_score", "out_features"),  # Faster / Mask R-CNN
        ("head", "classification_head", "num_classes"),  # RetinaNet, FCOS
        ("head", "classification_head", "num_columns"),  # SSD, SSDlite
    )
    for path in heads:
        value: Any = detector
        for attribute in path:
            value = getattr(value, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelLoadError(f"cannot read the class count of {type(detector).__name__}: pass DetectionModel(..., num_classes=K)")


def detection_options(input_size: tuple[int, int]) -> dict[str, Any]:
    """``load_model`` options for a wrapped torchvision detector: pixels in
    [0, 1] (it normalizes itself) at ``input_size`` (H, W)."""
    return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": tuple(input_size)}
