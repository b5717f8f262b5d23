"""Robustness metrics: max- and average-sensitivity (Yeh et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import MetricBatch
from cnnviz_plugins.evaluation.avg_sensitivity import AvgSensitivity
from cnnviz_plugins.evaluation.max_sensitivity import MaxSensitivity

from conftest import SMALL_CONFIG, small_torch_adapter
from metric_batches import method_batch
from tiny_models import LinearNet


def red_channel_batch(inputs, names) -> MetricBatch:
    """A 'method' whose map is the red channel of the normalized input."""
    return MetricBatch(inputs=inputs, maps=inputs[:, 0].copy(), classes=np.zeros(len(inputs), dtype=np.int64),
                       names=names, method="red", explain=lambda x, c: np.asarray(x)[:, 0])


def test_sensitivity_by_hand_on_a_map_that_is_the_input():
    # map = red channel of x = 1 everywhere (n pixels): the change is the red noise δ/std, uniform in ±r/std,
    # so ‖Φ(x+δ) − Φ(x)‖ / ‖Φ(x)‖ = sqrt(mean δ²) → (r / std) / sqrt(3) over 1024 pixels
    adapter = small_torch_adapter()
    std = SMALL_CONFIG.std[0]
    inputs = np.ones((2, 3, 32, 32), dtype=np.float32)
    batch = red_channel_batch(inputs, ["a", "b"])
    params = dict(radius=0.05, samples=6)
    average = AvgSensitivity(adapter, AvgSensitivity.make_params(**params)).evaluate(batch)
    largest = MaxSensitivity(adapter, MaxSensitivity.make_params(**params)).evaluate(batch)
    expected = 0.05 / std / math.sqrt(3)
    assert average.scores == pytest.approx([expected] * 2, rel=0.03)
    assert average.extras["changes"].shape == (2, 6)
    assert (largest.scores >= average.scores).all() and largest.scores == pytest.approx(average.extras["changes"].max(axis=1))
    assert average.scores[0] != average.scores[1]  # each image its own noise
    # the noise belongs to the image: the same in a batch of one
    alone = AvgSensitivity(adapter, AvgSensitivity.make_params(**params)).evaluate(red_channel_batch(inputs[1:], ["b"]))
    assert alone.scores[0] == average.scores[1]
    # no noise, no change; an all-zero map has no relative change
    assert AvgSensitivity(adapter, AvgSensitivity.make_params(radius=0.0)).evaluate(batch).scores.tolist() == [0.0, 0.0]
    zero = red_channel_batch(np.zeros((1, 3, 32, 32), np.float32), ["z"])
    assert math.isnan(MaxSensitivity(adapter, MaxSensitivity.make_params()).evaluate(zero).scores[0])


def test_saliency_of_a_linear_model_does_not_move_and_of_a_cnn_does(small_inputs):
    # a linear model's gradient is its weight whatever the input: sensitivity exactly 0
    adapter = cnnviz_core.load_model(LinearNet(height=8, width=8, classes=3), input_size=(8, 8))
    inputs = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    flat = MaxSensitivity(adapter, MaxSensitivity.make_params(samples=3)).evaluate(method_batch("saliency", adapter, inputs, ["a", "b"]))
    assert flat.scores.tolist() == [0.0, 0.0]
    cnn = small_torch_adapter()
    moved = MaxSensitivity(cnn, MaxSensitivity.make_params(samples=3, radius=0.1)).evaluate(
        method_batch("saliency", cnn, small_inputs, ["a", "b"]))
    assert (moved.scores > 0).all() and np.isfinite(moved.scores).all()
