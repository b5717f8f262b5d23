"""Integrated gradients' adaptive rule holds a bounded number of path
gradients on the host, whatever --steps: its trapezoid sum is kept as one
running sum, and a gradient it let go is computed again when an interval
beside it is bisected; the attributions stay those of the trapezoid rule on
the refined grid."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import PreprocessConfig
from cnnviz_core.toolkit.input_gradient import InputGradient
from cnnviz_plugins.attribution import integrated_gradients as ig

from conftest import SMALL_CONFIG
from tiny_models import SmallConvNet

SIZE = 64  # input side: one gradient is 3 x 64 x 64 float32 = 48 KiB, well above the run's other allocations


def big_small_adapter() -> TorchAdapter:
    """The small conv net (global pooling: any input size) configured for SIZE-pixel inputs."""
    config = PreprocessConfig(input_size=(SIZE, SIZE), mean=SMALL_CONFIG.mean, std=SMALL_CONFIG.std)
    return TorchAdapter(SmallConvNet(seed=0), "small_convnet", config)
GRADIENT_BYTES = 3 * SIZE * SIZE * 4
KEPT = 24  # gradients the adaptive rule may keep, for this test


@pytest.fixture
def traced_gradients(monkeypatch):
    """Path gradients as numpy-owned arrays: tracemalloc sees numpy's
    allocations but not torch's CPU buffers, which the gradients would
    otherwise be views of."""
    original = InputGradient.input_gradients

    def owned(self, inputs, targets):
        gradients, classes, scores = original(self, inputs, targets)
        return np.array(gradients), classes, scores

    monkeypatch.setattr(InputGradient, "input_gradients", owned)


@pytest.fixture
def points_evaluated(monkeypatch):
    counts: list[int] = []
    original = ig.IntegratedGradients._path

    def counted(self, x0, difference, target, alphas, weights=None):
        counts.append(len(alphas))
        return original(self, x0, difference, target, alphas, weights)

    monkeypatch.setattr(ig.IntegratedGradients, "_path", counted)
    return counts


def run_ig(steps: int):
    inputs = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tolerance 0 spends every step; no warning is under test here
        return cnnviz_core.run("integrated_gradients", big_small_adapter(), inputs, steps=steps, tolerance=0.0)


def peak_bytes(steps: int) -> int:
    tracemalloc.start()
    try:
        run_ig(steps)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_host_memory_does_not_grow_with_steps(traced_gradients, points_evaluated, monkeypatch):
    monkeypatch.setattr(ig, "KEPT_GRADIENTS_BYTES", KEPT * GRADIENT_BYTES)
    peaks = {steps: peak_bytes(steps) for steps in (32, 128, 256)}
    in_gradients = {k: round(v / GRADIENT_BYTES) for k, v in peaks.items()}
    # keeping every gradient would add 128 of them (6 MiB) between 128 and 256 steps
    assert peaks[256] - peaks[128] < 8 * GRADIENT_BYTES, in_gradients
    # over a 32-step run (which keeps all its 32): at most the kept ones and one round's new and
    # recomputed points (16 + 32, as rows and as copies); keeping everything would add 224
    assert peaks[256] - peaks[32] < (KEPT + 2 * 3 * ig.BISECTIONS_PER_ROUND) * GRADIENT_BYTES, in_gradients


def test_letting_gradients_go_does_not_change_the_attributions(points_evaluated, monkeypatch):
    everything = run_ig(256)
    assert sum(points_evaluated) == 256
    points_evaluated.clear()
    monkeypatch.setattr(ig, "KEPT_GRADIENTS_BYTES", KEPT * GRADIENT_BYTES)
    bounded = run_ig(256)
    assert sum(points_evaluated) > 256  # some ends were let go and computed again
    assert bounded.metadata["steps_used"] == everything.metadata["steps_used"] == [256]
    np.testing.assert_allclose(bounded.images, everything.images, rtol=1e-5, atol=1e-6 * np.abs(everything.images).max())


def test_running_sum_equals_the_trapezoid_rule_on_the_refined_grid():
    rng = np.random.default_rng(3)
    alphas = np.linspace(0.0, 1.0, 5)
    values = {float(a): rng.normal(size=(2, 3)) for a in alphas}
    running = ig.RefinedTrapezoid(alphas, [values[float(a)] for a in alphas], capacity=2)
    grid = list(alphas)
    for lefts in ([0.25, 0.75], [0.25, 0.5], [0.0]):  # bisect, let go, bisect beside what was let go
        rights = [min(a for a in grid if a > left) for left in lefts]
        middles = [(a + b) / 2 for a, b in zip(lefts, rights)]
        for m in middles:
            values[m] = rng.normal(size=(2, 3))
        again = running.missing(np.array(lefts + rights))
        running.bisect(np.array(lefts), np.array(rights), np.array(middles), [values[m] for m in middles],
                       {float(a): values[float(a)] for a in again})
        grid = sorted(grid + middles)
        errors = rng.normal(size=len(grid) - 1)
        running.keep_likely(np.array(grid), errors)
        assert len(running.kept) <= 2
    weights = ig.trapezoid_weights(np.array(grid))
    expected = sum(w * values[float(a)] for w, a in zip(weights, grid))
    np.testing.assert_allclose(running.total, expected, rtol=1e-12)
