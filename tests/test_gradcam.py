"""Grad-CAM against hand-computed values, and on the pretrained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from conftest import CAT_BOX, hook_total, in_box

from tiny_models import TinyCamNet

IDENTITY = PreprocessConfig(input_size=(4, 4), mean=(0, 0, 0), std=(1, 1, 1))

# Bilinear 2 → 4 upsampling (half-pixel centres, edges clamped), per axis.
UPSAMPLE = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=np.float64)


def tiny_input() -> np.ndarray:
    """Pixels read by the stride-2 1x1 conv: (0,0) (0,2) (2,0) (2,2).
    Feature maps by hand: A0 = relu(r - b) = [[1, 0], [0, 1]],
    A1 = relu(0.5 r + 2 g) = [[0.5, 2], [0, 0]]."""
    x = np.zeros((1, 3, 4, 4), dtype=np.float32)
    x[0, :, 0, 0] = (1, 0, 0)
    x[0, :, 0, 2] = (0, 1, 0)
    x[0, :, 2, 0] = (0, 0, 1)
    x[0, :, 2, 2] = (2, -1, 1)
    return x


@pytest.mark.parametrize(
    "target, layer_map, logit",
    [
        # class 0: w = (1, -2) → α = (0.25, -0.5); relu(0.25 A0 - 0.5 A1)
        (0, [[0, 0], [0, 0.25]], -0.65),
        # class 1 (also top-1): w = (0.5, 3) → α = (0.125, 0.75)
        (1, [[0.5, 1.5], [0, 0.125]], 1.925),
        (None, [[0.5, 1.5], [0, 0.125]], 1.925),
    ],
)
def test_gradcam_matches_hand_computation(target, layer_map, logit):
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    result = cnnviz_core.run("gradcam", adapter, tiny_input(), target=target, layer="features")
    expected_layer = np.array(layer_map)
    np.testing.assert_allclose(result.extras["layer_map"][0], expected_layer, atol=1e-6)
    np.testing.assert_allclose(result.maps[0], UPSAMPLE @ expected_layer @ UPSAMPLE.T, atol=1e-6)
    np.testing.assert_allclose(result.scores[0], logit, atol=1e-5)
    assert result.maps.dtype == np.float32 and result.maps.shape == (1, 4, 4)


def test_gradcam_prob_score_scales_weights_by_softmax_derivative():
    """For score = p_c, ∂p_c/∂A = p_c (w_c - Σ_j p_j w_j)/(hw): checked by hand formula."""
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    result = cnnviz_core.run("gradcam", adapter, tiny_input(), target=1, layer="features", score="prob")
    logits = np.array([-0.65, 1.925, 0.425])
    p = np.exp(logits) / np.exp(logits).sum()
    w = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])
    alpha = p[1] * (w[1] - p @ w) / 4
    a0, a1 = np.array([[1, 0], [0, 1.0]]), np.array([[0.5, 2], [0, 0.0]])
    expected = np.maximum(alpha[0] * a0 + alpha[1] * a1, 0)
    np.testing.assert_allclose(result.extras["layer_map"][0], expected, atol=1e-6)
    np.testing.assert_allclose(result.scores[0], p[1], atol=1e-6)


def test_gradcam_default_layer_is_last_spatial_feature_layer(lite0):
    assert lite0.default_layer() == "bn2"
    tiny = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    assert tiny.default_layer() == "features"


def test_gradcam_leaves_parameters_and_hooks_as_they_were():
    model = TinyCamNet()
    model.train()
    model.fc.weight.requires_grad_(False)  # a user's own freezing is kept
    adapter = TorchAdapter(model, "tiny", IDENTITY)
    cnnviz_core.run("gradcam", adapter, tiny_input(), layer="features")
    assert hook_total(model) == 0
    assert model.training and all(m.training for m in model.modules())
    assert model.features[0].weight.requires_grad and not model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_rejects_a_non_spatial_layer():
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    with pytest.raises(cnnviz_core.MethodError, match="feature map"):
        cnnviz_core.run("gradcam", adapter, tiny_input(), layer="fc")
    assert hook_total(adapter.module) == 0


def test_gradcam_on_pretrained_model_peaks_on_the_cat(lite0, photos):
    result = cnnviz_core.run(
        "gradcam", lite0, [photos["chelsea"], photos["coffee"], photos["cat_on_grey"]],
        target=["Egyptian cat", "espresso", "Egyptian cat"],
    )
    assert result.maps.shape == (3, 224, 224)
    assert list(result.classes) == [285, 967, 285]
    assert result.scores[0] > 8  # the cat's logit on the real photo
    # the cat pasted on grey: the peak and most of the map's mass lie on it
    assert in_box(result.maps[2])
    # more than half the mass on the fifth of the image the cat covers
    assert result.maps[2][CAT_BOX].sum() / result.maps[2].sum() > 0.5
    # raw values: never normalized to [0, 1]
    assert result.maps[0].max() != pytest.approx(1.0)


def test_gradcam_batch_matches_one_by_one(lite0, photos):
    both = cnnviz_core.run("gradcam", lite0, [photos["chelsea"], photos["coffee"]], target=285)
    single = cnnviz_core.run("gradcam", lite0, [photos["coffee"]], target=285)
    np.testing.assert_allclose(both.maps[1], single.maps[0], rtol=1e-4, atol=1e-5)


def test_gradcam_backward_stops_at_the_layer(monkeypatch):
    """No gradient reaches the modules before the target layer."""
    model = TinyCamNet()
    adapter = TorchAdapter(model, "tiny", IDENTITY)
    calls = []
    handle = model.features[0].register_full_backward_hook(lambda *a: calls.append(1))
    try:
        cnnviz_core.run("gradcam", adapter, tiny_input(), layer="features")
    finally:
        handle.remove()
    assert calls == []
    assert torch.is_grad_enabled()
