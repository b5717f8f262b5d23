"""EigenCAM: the first principal component's projection, checked in closed form
on rank-one activations, against numpy's SVD on a tiny net, across torch and
ONNX, and on a detector's backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig

from conftest import small_torch_adapter
from tiny_models import TinyCamNet

IDENTITY = PreprocessConfig(input_size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SMALL_LAYERS = {"torch": "features.5", "onnx": "/features/features.5/Clip"}


def tiny():
    return TorchAdapter(TinyCamNet(), "tiny", IDENTITY)


def test_rank_one_activations_give_the_pattern_times_the_channel_norm():
    # red only: TinyCamNet's 1x1 convolution (stride 2) gives A_0 = f and A_1 = 0.5 f for a
    # non-negative pattern f, so M = f c^T with c = (1, 0.5): the first component is c / |c|
    # and the projection is |c| f, positive where f is. Centred, it is |c| (f - mean f).
    pattern = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    image = np.zeros((1, 3, 8, 8), np.float32)
    image[0, 0] = pattern
    f = pattern[::2, ::2]
    for center, expected in ((False, np.sqrt(1.25) * f), (True, np.sqrt(1.25) * (f - f.mean()))):
        result = cnnviz_core.run("eigencam", tiny(), image, layer="features", center=center, normalized=True)
        np.testing.assert_allclose(result.extras["layer_map"][0], expected, rtol=1e-5, atol=1e-6)
        assert result.extras["explained_variance"][0] == pytest.approx(1.0, abs=1e-6)
        assert result.maps.shape == (1, 8, 8)


def test_general_activations_match_numpy_svd_with_the_sign_fixed():
    image = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    adapter = tiny()
    result = cnnviz_core.run("eigencam", adapter, image, layer="features", normalized=True)
    with torch.no_grad():
        activations = adapter.module.features(torch.from_numpy(image)).numpy()
    for i, a in enumerate(activations):
        points = a.reshape(2, -1).T.astype(np.float64)
        _, s, vt = np.linalg.svd(points, full_matrices=False)
        projection = (points @ vt[0]).reshape(4, 4)
        mean = a.mean(axis=0)
        if np.corrcoef(projection.ravel(), mean.ravel())[0, 1] < 0:
            projection = -projection
        np.testing.assert_allclose(result.extras["layer_map"][i], projection, rtol=1e-5, atol=1e-6)
        assert result.extras["explained_variance"][i] == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-5)
        # upsampled bilinearly to the input, as every CAM
        expected = torch.nn.functional.interpolate(torch.from_numpy(projection[None, None]).float(), size=(8, 8),
                                                   mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(result.maps[i], expected, rtol=1e-5, atol=1e-6)
    assert list(result.classes) == list(adapter.logits(image).argmax(axis=1))


def test_torch_and_onnx_agree(small_onnx_path, small_inputs):
    torch_model, onnx_model = small_torch_adapter(), cnnviz_core.load_model(small_onnx_path)
    for layers in (SMALL_LAYERS, {"torch": None, "onnx": None}):  # named, and each adapter's default layer
        on_torch = cnnviz_core.run("eigencam", torch_model, small_inputs, layer=layers["torch"], normalized=True)
        on_onnx = cnnviz_core.run("eigencam", onnx_model, small_inputs, layer=layers["onnx"], normalized=True)
        assert np.abs(on_torch.maps).max() > 0
        np.testing.assert_allclose(on_onnx.maps, on_torch.maps, atol=1e-4)
        np.testing.assert_array_equal(on_onnx.classes, on_torch.classes)


def test_eigencam_on_a_detector_backbone_reports_no_class():
    from test_detection import BrightSquareDetector, square_image

    class WithBackbone(BrightSquareDetector):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return super().forward(x + 0 * self.backbone(x).mean())

    model = cnnviz_core.load_model(WithBackbone(), input_size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))
    result = cnnviz_core.run("eigencam", model, square_image(), layer="backbone", normalized=True)
    assert result.maps.shape == (1, 32, 32) and np.isfinite(result.maps).all()
    assert result.classes[0] == -1 and np.isnan(result.scores[0])
