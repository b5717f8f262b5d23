"""RISE against a naive one-mask-at-a-time reference, and its convergence."""

from __future__ import annotations

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.adapter import select_scores
from cnnviz_core.config import PreprocessConfig
from cnnviz_plugins.attribution.rise import MaskSet

from tiny_models import LinearNet

CONFIG = PreprocessConfig(input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))


def naive_rise(adapter, x, cls, masks, keep, baseline, score="logit"):
    total = np.zeros(x.shape[-2:])
    for mask in masks:
        masked = (x * mask + baseline * (1 - mask))[None]
        total += select_scores(adapter.logits(masked.astype(np.float32)), np.array([cls]), score)[0] * mask
    return total / (len(masks) * keep)


def test_masks_are_smooth_shifted_and_reproducible():
    first = MaskSet.draw(20, 3, 0.5, (8, 8), seed=1)
    again = MaskSet.draw(20, 3, 0.5, (8, 8), seed=1)
    other = MaskSet.draw(20, 3, 0.5, (8, 8), seed=2)
    masks = first.masks(0, 20)
    assert masks.shape == (20, 8, 8) and masks.min() >= 0 and masks.max() <= 1
    assert np.array_equal(masks, again.masks(0, 20)) and not np.array_equal(masks, other.masks(0, 20))
    assert np.array_equal(first.masks(5, 9), masks[5:9])  # chunks are the same masks
    assert ((masks > 0) & (masks < 1)).any()  # bilinear upsampling: soft edges


@pytest.mark.parametrize("baseline, score", [(0.0, "logit"), (0.5, "prob")])
def test_matches_naive_reference(baseline, score):
    adapter = TorchAdapter(LinearNet(8, 8, classes=3, seed=5), "linear", CONFIG)
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    params = dict(masks=37, grid=3, keep=0.4, baseline=baseline, seed=3, score=score)
    result = cnnviz_core.run("rise", adapter, x, target=2, batch_size=5, **params)
    masks = MaskSet.draw(37, 3, 0.4, (8, 8), 3).masks(0, 37)
    expected = naive_rise(adapter, x[0], 2, masks, 0.4, baseline, score)
    np.testing.assert_allclose(result.maps[0], expected, rtol=1e-4, atol=1e-5)


def test_maps_from_two_seeds_agree_more_as_masks_grow():
    adapter = TorchAdapter(LinearNet(8, 8, classes=2, seed=7), "linear", CONFIG)
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)

    def agreement(count):
        a = cnnviz_core.run("rise", adapter, x, target=0, masks=count, grid=4, seed=10).maps[0]
        b = cnnviz_core.run("rise", adapter, x, target=0, masks=count, grid=4, seed=11).maps[0]
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    few, many = agreement(20), agreement(2000)
    assert many > few and many > 0.95


def test_keep_probability_is_checked():
    adapter = TorchAdapter(LinearNet(8, 8), "linear", CONFIG)
    with pytest.raises(cnnviz_core.InputError, match="keep"):
        cnnviz_core.run("rise", adapter, np.zeros((1, 3, 8, 8), np.float32), keep=1.5)
