"""Grad-CAM++, LayerCAM and Guided Grad-CAM against hand computations on
TinyCamNet (constant gradients c_k = w_ck / 4 per channel), and on the
pretrained model."""

from __future__ import annotations

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from conftest import CAT_BOX, in_box
from test_gradcam import IDENTITY, UPSAMPLE, tiny_input

from tiny_models import TinyCamNet

A0 = np.array([[1, 0], [0, 1.0]])
A1 = np.array([[0.5, 2], [0, 0.0]])
W = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])


def tiny(method, **params):
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    if "layer" in cnnviz_core.get_registry().method(method).Params.__dataclass_fields__:
        params.setdefault("layer", "features")
    return cnnviz_core.run(method, adapter, tiny_input(), **params)


@pytest.mark.parametrize("target", [0, 1, 2])
def test_layercam_weights_each_position_by_its_positive_gradient(target):
    c = W[target] / 4
    expected = np.maximum(np.maximum(c[0], 0) * A0 + np.maximum(c[1], 0) * A1, 0)
    result = tiny("layercam", target=target)
    np.testing.assert_allclose(result.extras["layer_map"][0], expected, atol=1e-6)
    np.testing.assert_allclose(result.maps[0], UPSAMPLE @ expected @ UPSAMPLE.T, atol=1e-6)


@pytest.mark.parametrize("target", [0, 1, 2])
def test_gradcam_plus_plus_closed_form_for_constant_gradients(target):
    # constant g per channel: α = g² / (2g² + S_k g³) with S_k = Σ A_k; weight = 4 α ReLU(g)
    c = W[target] / 4
    sums = np.array([A0.sum(), A1.sum()])
    alpha = c**2 / (2 * c**2 + sums * c**3)
    weights = 4 * alpha * np.maximum(c, 0)
    expected = np.maximum(weights[0] * A0 + weights[1] * A1, 0)
    result = tiny("gradcam_plus_plus", target=target)
    np.testing.assert_allclose(result.extras["layer_map"][0], expected, atol=1e-6)


def test_guided_gradcam_is_guided_backprop_times_gradcam():
    guided = tiny("guided_backprop", target=1)
    gradcam = tiny("gradcam", target=1)
    result = tiny("guided_gradcam", target=1)
    expected = guided.images * gradcam.maps[:, None]
    np.testing.assert_allclose(result.images, expected, atol=1e-6)
    np.testing.assert_allclose(result.maps, np.abs(expected).max(axis=1), atol=1e-6)
    np.testing.assert_allclose(result.extras["gradcam"], gradcam.maps, atol=1e-6)


def test_guided_gradcam_refuses_neuron_targets():
    with pytest.raises(cnnviz_core.TargetError, match="guided_gradcam needs a class index or label name or top1; got the neuron target features:0"):
        tiny("guided_gradcam", target="features:0")


@pytest.mark.parametrize("method", ["gradcam_plus_plus", "layercam", "guided_gradcam"])
def test_pretrained_maps_peak_on_the_cat(lite0, photos, method):
    result = cnnviz_core.run(method, lite0, [photos["cat_on_grey"]], target="Egyptian cat")
    assert result.classes[0] == 285 and result.maps.shape == (1, 224, 224)
    assert in_box(result.maps[0])
    inside = np.zeros((224, 224), bool)
    inside[CAT_BOX] = True
    assert result.maps[0][inside].mean() > 3 * result.maps[0][~inside].mean()
