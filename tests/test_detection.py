"""Detection targets and D-RISE: a hand-built "detector" whose one box follows
a bright square (D-RISE must find the square, on torch and on its ONNX copy),
and torchvision's Faster R-CNN (random initialization, 96 px) through
DetectionModel with a detection:CLASS@box target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_adapters.detection import DetectionModel, detection_options
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_core import MethodError, MethodWarning, TargetError

from conftest import hook_total, small_torch_adapter

SIZE = 32
SQUARE = (slice(8, 16), slice(18, 26))  # rows, columns of the bright square
SQUARE_BOX = "detection:1@18,8,26,16"  # x0, y0, x1, y1


class BrightSquareDetector(nn.Module):
    """One detection of class 1: an 8 x 8 box centred on the brightness
    centroid of the pixels brighter than 0.5, scored by the share of the
    square's brightness that is visible (1 on the clean image)."""

    num_classes = 2

    def forward(self, x):
        weight = torch.relu(x.mean(dim=1) - 0.5)  # (B, H, W)
        total = weight.sum(dim=(1, 2))
        rows = torch.arange(x.shape[-2], dtype=x.dtype) + 0.5
        cols = torch.arange(x.shape[-1], dtype=x.dtype) + 0.5
        cy = (weight.sum(dim=2) * rows).sum(dim=1) / (total + 1e-6)
        cx = (weight.sum(dim=1) * cols).sum(dim=1) / (total + 1e-6)
        score = total / 32  # the clean square: 64 pixels 0.5 above the threshold
        rows = torch.stack([cx - 4, cy - 4, cx + 4, cy + 4, score, torch.ones_like(score)], dim=1)
        return rows[:, None, :]  # (B, 1, 6)


def square_image() -> np.ndarray:
    image = np.full((1, 3, SIZE, SIZE), 0.2, np.float32)
    image[0, :, SQUARE[0], SQUARE[1]] = 1.0
    return image


def toy_adapter():
    return cnnviz_core.load_model(BrightSquareDetector(), input_size=(SIZE, SIZE), mean=(0, 0, 0), std=(1, 1, 1))


DRISE = {"masks": 300, "grid": 8, "seed": 1}


def test_drise_peaks_on_the_square_the_box_follows_on_torch_and_onnx(tmp_path):
    adapter, image = toy_adapter(), square_image()
    result = cnnviz_core.run("drise", adapter, image, target=SQUARE_BOX, normalized=True, **DRISE)
    saliency = result.maps[0]
    row, col = np.unravel_index(np.argmax(saliency), saliency.shape)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    inside = np.zeros(saliency.shape, bool)
    inside[SQUARE] = True
    assert saliency[inside].mean() > 1.25 * saliency[~inside].mean()  # 1.34 measured with these masks
    assert result.scores[0] == pytest.approx(1.0, rel=1e-5)  # IoU 1 x the score
    path = export_onnx(adapter, tmp_path / "square.onnx")
    on_onnx = cnnviz_core.run("drise", cnnviz_core.load_model(path), image, target=SQUARE_BOX, normalized=True, **DRISE)
    np.testing.assert_allclose(on_onnx.maps, result.maps, atol=1e-4)


def test_drise_refuses_what_is_not_a_detector_and_warns_on_a_missed_object(small_inputs):
    with pytest.raises(MethodError, match=r"not detections.*\(x0, y0, x1, y1, score, label\).*DetectionModel"):
        cnnviz_core.run("drise", small_torch_adapter(), small_inputs, target="detection:1@0,0,8,8", normalized=True, masks=4)
    with pytest.warns(MethodWarning, match="no detection of class 1 overlapping"):
        result = cnnviz_core.run("drise", toy_adapter(), square_image(), target="detection:1@0,0,4,4", normalized=True, masks=8)
    assert not result.maps.any()


def test_detection_target_on_the_toy_detector_is_iou_times_score():
    adapter, image = toy_adapter(), square_image()
    score = 1.0
    half_overlap = cnnviz_core.run("saliency", adapter, image, target="detection:1@22,8,30,16", normalized=True)
    assert half_overlap.scores[0] == pytest.approx(score * 32 / 96, rel=1e-5)  # IoU of two 8x8 boxes offset by 4 = 1/3
    other_class = cnnviz_core.run("saliency", adapter, image, target="detection:0@18,8,26,16", normalized=True)
    assert other_class.scores[0] == 0 and not other_class.images.any()
    with pytest.raises(TargetError, match=r"needs \(B, classes\) logits but the model returns \(1, 1, 6\).*detection:CLASS"):
        cnnviz_core.run("saliency", adapter, image, normalized=True)  # top-1 means nothing to a detector


@pytest.mark.slow
def test_faster_rcnn_detection_target_gives_a_finite_score_gradcam_and_eigencam_maps():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(0)
    detector = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=96,
                                                 max_size=96, box_score_thresh=0.0)
    detector.train()  # a run puts it in eval mode and must give it back as it was
    wrapped = DetectionModel(detector, max_detections=10)
    adapter = cnnviz_core.load_model(wrapped, **detection_options((96, 96)))
    assert adapter.num_classes == 5
    image = np.random.default_rng(0).random((1, 3, 96, 96)).astype(np.float32)
    rows = adapter.logits(image)[0]
    assert rows.shape == (10, 6) and np.isfinite(rows).all()
    x0, y0, x1, y1, top_score, label = rows[0]
    target = f"detection:{int(label)}@{x0:.4f},{y0:.4f},{x1:.4f},{y1:.4f}"
    result = cnnviz_core.run("gradcam", adapter, image, target=target, layer="detector.backbone.body.16", normalized=True)
    # the best match of a detection's own box is that detection (IoU 1, the highest score)
    assert result.scores[0] == pytest.approx(top_score, rel=1e-3)
    assert result.maps.shape == (1, 96, 96) and np.isfinite(result.maps).all()
    eigen = cnnviz_core.run("eigencam", adapter, image, layer="detector.backbone.body.16", normalized=True)
    assert eigen.maps.shape == (1, 96, 96) and np.abs(eigen.maps).max() > 0 and eigen.classes[0] == -1
    assert detector.training and hook_total(detector) == 0


def test_gradcam_refuses_a_layer_with_one_map_per_proposal():
    class WithProposals(BrightSquareDetector):
        """A stand-in for RoI pooling: a layer that outputs 3 maps per image."""

        def __init__(self):
            super().__init__()
            self.roi = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            proposals = self.roi(x.repeat(3, 1, 1, 1))
            return super().forward(x + 0 * proposals.mean())

    model = cnnviz_core.load_model(WithProposals(), input_size=(SIZE, SIZE), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(MethodError, match=r"'roi' outputs 3 maps for 1 input\(s\).*RoI layer.*backbone layer"):
        cnnviz_core.run("gradcam", model, square_image(), target=SQUARE_BOX, layer="roi", normalized=True)
    assert hook_total(model.module) == 0


class ListDetector(nn.Module):
    """torchvision's detector interface in small: a list of (3, H, W) images
    in, one dict of boxes, scores and labels per image out; each image's three
    detections are boxes around its three brightest columns' centres."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, images):
        found = []
        for image in images:
            column = image.mean(dim=(0, 1)) * self.scale
            scores, where = column.topk(3)
            x = where.to(image.dtype)
            boxes = torch.stack([x, torch.zeros_like(x), x + 2, torch.full_like(x, 4.0)], dim=1)
            found.append({"boxes": boxes, "scores": scores.sigmoid(), "labels": torch.tensor([1, 2, 1])})
        return found


def test_detection_model_rows_are_sorted_padded_and_differentiable(tmp_path):
    wrapped = DetectionModel(ListDetector(), max_detections=5, num_classes=3)
    images = torch.rand(2, 3, 4, 8, requires_grad=True)
    rows = wrapped(images)
    assert rows.shape == (2, 5, 6) and not rows[:, 3:].any()  # three detections, two zero rows
    assert (rows[:, :3, 4].diff(dim=1) <= 0).all() and set(rows[:, :3, 5].unique().tolist()) == {1.0, 2.0}
    rows[0, 0, 4].backward()
    assert images.grad[0].abs().sum() > 0 and not images.grad[1].any()
    adapter = cnnviz_core.load_model(wrapped, **detection_options((4, 8)))
    with pytest.raises(cnnviz_core.InputError, match="cannot be exported to ONNX faithfully.*run drise"):
        export_onnx(adapter, tmp_path / "detector.onnx")
    assert not list(tmp_path.iterdir())  # no half-written model or sidecar
    with pytest.raises(cnnviz_core.ModelLoadError, match="pass DetectionModel\\(..., num_classes=K\\)"):
        DetectionModel(ListDetector())
