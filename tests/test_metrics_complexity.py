"""Complexity metrics as plugins: sparseness (Gini, Chalasani et al. 2020) and
complexity (entropy, Bhatt et al. 2020), on exact extremes, on a random map
whose values are known in closed form, and on a real method's maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnviz_core import MetricBatch
from cnnviz_plugins.evaluation.complexity import Complexity
from cnnviz_plugins.evaluation.sparseness import Sparseness

from conftest import small_torch_adapter
from metric_batches import method_batch


def scores(cls, adapter, maps) -> np.ndarray:
    batch = MetricBatch(inputs=np.zeros((len(maps), 3, *maps.shape[1:]), np.float32), maps=maps,
                        classes=np.zeros(len(maps), np.int64), names=[f"m{i}" for i in range(len(maps))],
                        method="m", explain=lambda x, c: None)
    return cls(adapter, cls.make_params()).evaluate(batch).scores


def test_extremes_and_a_uniform_random_map():
    adapter = small_torch_adapter()
    n = 64 * 64
    one_hot = np.zeros((64, 64), np.float32)
    one_hot[10, 20] = 3.0
    uniform = np.full((64, 64), 0.25, np.float32)
    noise = np.random.default_rng(0).uniform(size=(64, 64)).astype(np.float32)
    maps = np.stack([one_hot, uniform, noise])
    sparse = scores(Sparseness, adapter, maps)
    assert sparse[:2].tolist() == [1.0, 0.0]
    # U(0, 1) values: Gini = E|a - b| / (2 E a) = (1/3) / 1 = 1/3
    assert sparse[2] == pytest.approx(1 / 3, abs=0.01)
    entropy = scores(Complexity, adapter, maps)
    assert entropy[0] == 0.0 and entropy[1] == pytest.approx(math.log(n))
    # p_i = a_i / (n/2): H = log(n/2) - E[a log a] / E[a] = log(n/2) + 1/2
    assert entropy[2] == pytest.approx(math.log(n / 2) + 0.5, abs=0.01)


def test_a_real_methods_maps_lie_between_the_extremes(small_inputs):
    adapter = small_torch_adapter()
    batch = method_batch("saliency", adapter, small_inputs, ["a", "b"])
    sparse = Sparseness(adapter, Sparseness.make_params()).evaluate(batch).scores
    entropy = Complexity(adapter, Complexity.make_params()).evaluate(batch).scores
    assert ((0 < sparse) & (sparse < 1)).all()
    assert ((0 < entropy) & (entropy < math.log(32 * 32))).all()
