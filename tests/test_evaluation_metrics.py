"""Each faithfulness metric against values worked out by hand on a linear
network (score = W · x, the logit), where every perturbation's effect is a
sum of the removed pixels' contributions."""

from __future__ import annotations

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import MetricBatch, get_registry
from cnnviz_core.config import PreprocessConfig

from tiny_models import LinearNet


def linear_adapter(pixel_weights: np.ndarray) -> TorchAdapter:
    """Class 0's weight is ``pixel_weights`` (H, W) on every channel; class 1's is zero."""
    height, width = pixel_weights.shape
    weight = np.zeros((2, 3, height, width), np.float32)
    weight[0] = pixel_weights[None]
    config = PreprocessConfig(input_size=(height, width), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return TorchAdapter(LinearNet(height, width, classes=2, weight=weight), "linear", config)


def metric(name: str, adapter, **params):
    cls = get_registry().method(name)
    return cls(adapter, cls.make_params(score="logit", runtime="default", **params))


def batch(inputs: np.ndarray, maps: np.ndarray) -> MetricBatch:
    inputs = np.asarray(inputs, np.float32)
    return MetricBatch(inputs, np.asarray(maps, np.float32), np.zeros(len(inputs), np.int64),
                       [f"image{i}" for i in range(len(inputs))], "test", explain=None)


W4 = np.array([[4.0, 3.0], [2.0, 1.0]])


def test_deletion_on_a_linear_net_is_the_hand_computed_area():
    # x = 1 everywhere: pixel contributions 3·w = 12, 9, 6, 3; f(x) = 30. Removing them in the map's
    # order (the map is w) to the mean baseline (0) leaves 30, 18, 9, 3, 0 at x = 0, ¼, ½, ¾, 1.
    adapter = linear_adapter(W4)
    scores = metric("deletion", adapter, steps=4, baseline="mean").evaluate(batch(np.ones((1, 3, 2, 2)), W4[None]))
    np.testing.assert_allclose(scores.curves["deletion"][0], [30, 18, 9, 3, 0], atol=1e-5)
    np.testing.assert_allclose(scores.curve_x["deletion"], [0, 0.25, 0.5, 0.75, 1])
    assert scores.scores[0] == pytest.approx(0.25 * (24 + 13.5 + 6 + 1.5), abs=1e-5)  # 11.25
    # the reversed map removes the small contributions first: 30, 27, 21, 12, 0
    reverse = metric("deletion", adapter, steps=4).evaluate(batch(np.ones((1, 3, 2, 2)), -W4[None]))
    assert reverse.scores[0] == pytest.approx(0.25 * (28.5 + 24 + 16.5 + 6), abs=1e-5)  # 18.75


def test_insertion_of_a_constant_image_stays_at_its_score():
    # a blur of a constant image is itself (edges replicated): every step scores f(x) = 3 · 2 · Σw = 60
    adapter = linear_adapter(W4)
    scores = metric("insertion", adapter, steps=4, blur_sigma=1.0).evaluate(batch(np.full((1, 3, 2, 2), 2.0), W4[None]))
    np.testing.assert_allclose(scores.curves["insertion"][0], 60, atol=1e-4)
    assert scores.scores[0] == pytest.approx(60, abs=1e-4)


def test_insertion_steps_add_the_inserted_pixels_contributions():
    adapter = linear_adapter(W4)
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    blurred = cnnviz_core.toolkit.gaussian_blur(x, 1.0)
    contribution = ((x - blurred)[0] * W4).sum(axis=0)  # what inserting each pixel adds
    expected = [(blurred[0] * W4).sum() + contribution.ravel()[:k].sum() for k in range(5)]  # the map's order is reading order
    scores = metric("insertion", adapter, steps=4, blur_sigma=1.0).evaluate(batch(x, W4[None]))
    np.testing.assert_allclose(scores.curves["insertion"][0], expected, rtol=1e-5, atol=1e-4)


W16 = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=np.float64)


def test_pixel_flipping_aopc_by_patches_morf_and_lerf():
    # x = 1: the four 2 x 2 patches contribute 12, 24, 36, 48 (f = 120). MoRF removes 48, 36, 24, 12:
    # drops 0, 48, 84, 108, 120, AOPC 72. LeRF: drops 0, 12, 36, 72, 120, AOPC 48.
    adapter = linear_adapter(W16)
    inputs = np.ones((1, 3, 4, 4))
    morf = metric("pixel_flipping", adapter, patch=2, regions=4, baseline="mean").evaluate(batch(inputs, W16[None]))
    np.testing.assert_allclose(morf.curves["pixel_flipping"][0], [120, 72, 36, 12, 0], atol=1e-4)
    assert morf.scores[0] == pytest.approx(72, abs=1e-4)
    lerf_metric = metric("pixel_flipping", adapter, patch=2, regions=4, baseline="mean", order="lerf")
    assert lerf_metric.evaluate(batch(inputs, W16[None])).scores[0] == pytest.approx(48, abs=1e-4)
    assert morf.scores[0] > 48 and metric("pixel_flipping", adapter).higher_is_better and not lerf_metric.higher_is_better


def test_road_imputes_the_removed_pixel_from_its_neighbours():
    # 3 x 3 image of squares 0, 1, 4, ... 64 on every channel; the map ranks the centre (16) first.
    # Imputed centre: (1 + 9 + 25 + 49) / 6 + (0 + 4 + 36 + 64) / 12 = 14 + 26/3; the logit (W = 1) rises by
    # 3 · (22.667 − 16) = 20 from 3 · 204 = 612.
    adapter = linear_adapter(np.ones((3, 3)))
    squares = (np.arange(9, dtype=np.float32) ** 2).reshape(3, 3)
    ranking = np.arange(9, dtype=np.float32).reshape(3, 3)
    ranking[1, 1] = 100
    scores = metric("road", adapter, steps=8, noise=0.0).evaluate(batch(np.broadcast_to(squares, (1, 3, 3, 3)), ranking[None]))
    assert scores.curves["road"][0, 0] == pytest.approx(612 + 3 * (14 + 26 / 3 - 16), abs=1e-3)
    np.testing.assert_allclose(scores.curve_x["road"], np.arange(1, 9) / 9)
    assert scores.scores[0] == pytest.approx(scores.curves["road"][0].mean())


def test_faithfulness_correlation_is_one_for_the_exact_contributions():
    # with the mean baseline (0) the drop on a subset is the sum of its pixels' W·x: the map W·x (summed
    # over channels) correlates perfectly, its negative at -1
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(4, 4))
    adapter = linear_adapter(weights)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    exact = (x * weights).sum(axis=1)
    fc = metric("faithfulness_correlation", adapter, runs=20, subset=3)
    np.testing.assert_allclose(fc.evaluate(batch(x, exact)).scores, 1.0, atol=1e-6)
    np.testing.assert_allclose(fc.evaluate(batch(x, -exact)).scores, -1.0, atol=1e-6)
    assert np.isnan(fc.evaluate(batch(x, np.ones_like(exact))).scores).all()  # a uniform map: no correlation


def test_infidelity_is_zero_for_the_linear_response_and_scale_free_when_normalized():
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(4, 4))
    adapter = linear_adapter(weights)
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    raw = metric("infidelity", adapter, normalize=False, samples=8)
    assert raw.evaluate(batch(x, weights[None])).scores[0] == pytest.approx(0, abs=1e-8)
    # a map twice too large misses by W·I on each draw, exactly as much as no map at all
    doubled, nothing = (raw.evaluate(batch(x, m[None])).scores[0] for m in (2 * weights, 0 * weights))
    assert doubled == pytest.approx(nothing, rel=1e-6) and doubled > 0
    normalized = metric("infidelity", adapter, samples=8)
    assert normalized.evaluate(batch(x, 2 * weights[None])).scores[0] == pytest.approx(0, abs=1e-8)


def test_metrics_cannot_be_run_as_methods():
    adapter = linear_adapter(W4)
    with pytest.raises(cnnviz_core.InputError, match="cnnviz evaluate"):
        cnnviz_core.run("deletion", adapter, np.ones((1, 3, 2, 2), np.float32), normalized=True)


def test_forward_scores_time_the_runners_and_run_the_model_in_eval_mode():
    # a fresh module is in training mode (batch norm on batch statistics); a job of 4+ batches times eager
    # torch and onnxruntime on its first batches, keeps their results, and every score is the eval-mode one
    from cnnviz_core.metric_forward import ForwardScores

    from conftest import small_torch_adapter

    adapter = small_torch_adapter()
    inputs = np.random.default_rng(0).normal(size=(150, 3, 32, 32)).astype(np.float32)
    classes = np.arange(150) % 5
    metadata: dict = {}
    forward = ForwardScores(adapter, score="logit", batch_size=32, metadata=metadata)
    forward.scores(inputs[:10], classes[:10])
    assert "too small" in metadata["forward"]["how"]  # for that job only: a larger one still times the runners
    scores = forward.scores(inputs, classes)
    with adapter.session():
        expected = adapter.logits(inputs)[np.arange(150), classes]
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert adapter.module.training  # left as it was
    assert metadata["forward"]["how"] == "timed" and set(metadata["forward"]["ms_per_input"]) == {"torch", "onnxruntime"}
    assert forward.forwards == 10 + 150  # the probe's batches were kept, nothing ran twice
