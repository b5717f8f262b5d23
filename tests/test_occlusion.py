"""Occlusion against the definition, on hand-checked and real models."""

from __future__ import annotations

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from cnnviz_plugins.occlusion import window_starts
from conftest import CAT_BOX, in_box

from tiny_models import LinearNet


def config(size):
    return PreprocessConfig(input_size=(size, size), mean=(0, 0, 0), std=(1, 1, 1))


def naive_occlusion(model_logits, x, cls, window, stride, baseline):
    """One window at a time, straight from the definition."""
    _, _, height, width = x.shape
    clean = model_logits(x)[0, cls]
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for y in window_starts(height, window, stride):
        for xx in window_starts(width, window, stride):
            occluded = x.copy()
            occluded[:, :, y : y + window, xx : xx + window] = baseline
            drop = clean - model_logits(occluded)[0, cls]
            total[y : y + window, xx : xx + window] += drop
            count[y : y + window, xx : xx + window] += 1
    return total / count


def test_window_starts_cover_every_pixel():
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(5, 5, 2) == [0]


def test_one_pixel_windows_give_each_pixels_contribution():
    """For a linear score and window 1, a pixel's value is Σ_c W[c, p] · x[c, p]."""
    weight = np.zeros((1, 3, 2, 2), dtype=np.float32)
    weight[0, 0] = [[1, 2], [3, 4]]
    weight[0, 1] = [[-1, 0], [0, 1]]
    weight[0, 2] = [[0, 0], [2, 0]]
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    x[0, 0] = [[1, 1], [1, 1]]
    x[0, 1] = [[2, 0], [0, 3]]
    x[0, 2] = [[5, 5], [0.5, 5]]
    adapter = TorchAdapter(LinearNet(2, 2, classes=1, weight=weight), "linear", config(2))
    result = cnnviz_core.run("occlusion", adapter, x, target=0, window=1, stride=1)
    # pixel (0,0): 1*1 + (-1)*2 + 0*5 = -1; (0,1): 2; (1,0): 3 + 2*0.5 = 4; (1,1): 4 + 3 = 7
    np.testing.assert_allclose(result.maps[0], [[-1, 2], [4, 7]], atol=1e-5)
    np.testing.assert_allclose(result.extras["grid"][0], [[-1, 2], [4, 7]], atol=1e-5)


@pytest.mark.parametrize("window, stride, baseline", [(2, 1, 0.0), (3, 2, 0.5), (4, 3, -1.0)])
def test_matches_naive_reference_on_linear_model(window, stride, baseline):
    model = LinearNet(7, 7, classes=3, seed=1)
    adapter = TorchAdapter(model, "linear", config(7))
    x = np.random.default_rng(2).normal(size=(1, 3, 7, 7)).astype(np.float32)
    result = cnnviz_core.run("occlusion", adapter, x, target=2, window=window, stride=stride, baseline=baseline, batch_size=3)
    expected = naive_occlusion(adapter.logits, x, 2, window, stride, baseline)
    np.testing.assert_allclose(result.maps[0], expected, atol=1e-4)


def test_prob_score_uses_softmax_probabilities():
    model = LinearNet(4, 4, classes=3, seed=3)
    adapter = TorchAdapter(model, "linear", config(4))
    x = np.random.default_rng(4).normal(size=(1, 3, 4, 4)).astype(np.float32)

    def probs(batch):
        logits = adapter.logits(batch)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    result = cnnviz_core.run("occlusion", adapter, x, target=1, window=2, stride=2, score="prob")
    np.testing.assert_allclose(result.maps[0], naive_occlusion(probs, x, 1, 2, 2, 0.0), atol=1e-5)


def test_window_larger_than_input_is_refused():
    adapter = TorchAdapter(LinearNet(4, 4), "linear", config(4))
    with pytest.raises(cnnviz_core.InputError, match="window"):
        cnnviz_core.run("occlusion", adapter, np.zeros((1, 3, 4, 4), np.float32), window=5)


def test_pretrained_occlusion_peaks_on_the_cat_and_onnx_agrees(lite0, lite0_onnx, photos):
    onnx_model = cnnviz_core.load_model(lite0_onnx)
    params = dict(target="Egyptian cat", window=56, stride=28)
    torch_result = cnnviz_core.run("occlusion", lite0, [photos["cat_on_grey"]], **params)
    onnx_result = cnnviz_core.run("occlusion", onnx_model, [photos["cat_on_grey"]], **params)
    grid = torch_result.extras["grid"][0]
    assert grid.shape == (7, 7)
    assert in_box(torch_result.maps[0])
    # occluding plain grey background changes nothing
    assert np.abs(torch_result.maps[0][170:, :60]).max() < 0.05
    np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-3, rtol=1e-4)
    assert onnx_result.scores[0] == pytest.approx(torch_result.scores[0], abs=1e-4)
