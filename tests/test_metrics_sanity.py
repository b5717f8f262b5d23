"""Sanity metrics: model-parameter randomization (Adebayo et al. 2018) and the
random-logit test (Sixt et al. 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_core import MetricBatch
from cnnviz_plugins.evaluation.model_randomization import ModelRandomization
from cnnviz_plugins.evaluation.random_logit import RandomLogit
from cnnviz_plugins.evaluation.support.rank_similarity import spearman, ssim

from conftest import hook_total, small_torch_adapter, state_copy, states_equal
from metric_batches import method_batch, sobel_batch
from tiny_models import LinearNet


def randomization(adapter, **params) -> ModelRandomization:
    metric = ModelRandomization(adapter, ModelRandomization.make_params(**params))
    metric.setup()
    return metric


@pytest.mark.slow
def test_cascading_randomization_decorrelates_gradcam_but_not_an_edge_detector(lite0):
    inputs = cnnviz_core.preprocess(lite0, ["skimage:chelsea"])
    before = state_copy(lite0.module)
    metric = randomization(lite0, layers=2)  # the classifier alone, then every layer down to the stem
    assert metric.metadata["layers"][0] == "classifier" and metric.metadata["layers"][-1] == "conv_stem"
    batch = method_batch("gradcam", lite0, inputs, ["chelsea"])
    gradcam = metric.evaluate(batch)
    ranks = gradcam.curves["spearman"][0]
    assert ranks[0] < 0.8  # a random classifier already changes the map
    assert abs(ranks[-1]) < 0.3  # the whole model random: no rank correlation left
    assert gradcam.scores[0] == pytest.approx(ranks.mean())
    assert gradcam.curve_x["spearman"].tolist() == [1.0, 50.0]  # depth from the top of 50 weight layers
    sobel = metric.evaluate(sobel_batch(batch))
    assert sobel.curves["spearman"].tolist() == [[1.0, 1.0]] and sobel.curves["ssim"].tolist() == [[1.0, 1.0]]
    assert states_equal(before, state_copy(lite0.module)) and hook_total(lite0.module) == 0


def test_randomization_by_hand_on_a_linear_model():
    # saliency of a linear model is max over colours of |W_class|: with the one weight layer randomized the
    # map is the same expression of the random weight, so both similarities follow from the two weights alone
    net = LinearNet(height=8, width=8, classes=2, seed=1)
    adapter = cnnviz_core.load_model(net, input_size=(8, 8))
    inputs = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    batch = method_batch("saliency", adapter, inputs, ["x"], target=[1])
    metric = randomization(adapter, layers=0)
    result = metric.evaluate(batch)
    trained = np.abs(net.fc.weight.detach().numpy()[1].reshape(3, 8, 8)).max(axis=0)
    random = np.abs(metric.random["fc"][1].reshape(3, 8, 8)).max(axis=0)
    assert metric.random["fc"].std() == pytest.approx(net.fc.weight.detach().numpy().std(), rel=0.1)
    assert result.curves["spearman"][0, 0] == pytest.approx(spearman(trained, random))
    assert result.curves["ssim"][0, 0] == pytest.approx(ssim(trained, random))
    assert abs(result.scores[0]) < 0.3  # independent weights: no rank correlation to speak of


def test_plans_cascade_from_the_top_and_independent_one_layer_each():
    adapter = small_torch_adapter()
    names = [layer.name for layer in adapter.weight_layers()]
    assert len(names) == 3  # conv, conv, fc
    cascade = randomization(adapter, layers=0).steps
    assert [step.randomized for step in cascade] == [tuple(names[2:][::-1]), tuple(names[1:][::-1]), tuple(names[::-1])]
    assert [step.depth for step in cascade] == [1, 2, 3]
    independent = randomization(adapter, layers=0, mode="independent").steps
    assert [step.randomized for step in independent] == [(names[2],), (names[1],), (names[0],)]
    assert [step.added for step in cascade] == [(names[2],), (names[1],), (names[0],)]  # each layer swapped in once
    # a cascade draws each layer once: the top layer's random weights are the same at every step
    metric = randomization(adapter, layers=0, seed=3)
    again = randomization(adapter, layers=0, seed=3)
    assert all(np.array_equal(metric.random[n], again.random[n]) for n in names)
    assert not np.array_equal(metric.random[names[0]], randomization(adapter, layers=0, seed=4).random[names[0]])


def test_weights_restored_bit_for_bit_on_success_and_when_the_method_fails_mid_way(small_inputs):
    adapter = small_torch_adapter()
    module = adapter.module
    before = state_copy(module)
    batch = method_batch("gradcam", adapter, small_inputs, ["a", "b"])
    seen = []
    explain = batch.explain

    def watching(inputs, classes):
        seen.append((module.features[0].weight.detach().clone(), module.fc.weight.detach().clone()))
        return explain(inputs, classes)

    batch.explain = watching
    metric = randomization(adapter, layers=0)
    scores = metric.evaluate(batch)
    assert scores.curves["spearman"].shape == (2, 3) and np.isfinite(scores.scores).all()
    # the method saw the first conv randomized only at the last cascade step, the top layer's draw at every step
    assert torch.equal(seen[0][0], before["features.0.weight"]) and not torch.equal(seen[2][0], before["features.0.weight"])
    assert all(np.array_equal(fc.numpy(), metric.random["fc"]) for _, fc in seen)
    assert states_equal(before, state_copy(module)) and hook_total(module) == 0

    # independent: one layer random at a time, the others trained
    seen.clear()
    randomization(adapter, layers=0, mode="independent").evaluate(batch)
    assert not torch.equal(seen[0][1], before["fc.weight"]) and torch.equal(seen[0][0], before["features.0.weight"])
    assert torch.equal(seen[2][1], before["fc.weight"]) and not torch.equal(seen[2][0], before["features.0.weight"])
    assert states_equal(before, state_copy(module)) and hook_total(module) == 0

    calls = []

    def failing(inputs, classes):
        calls.append(1)
        module.fail = len(calls) == 2  # the forward raises inside Grad-CAM's hooks at the second step
        return explain(inputs, classes)

    batch.explain = failing
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            randomization(adapter, layers=0).evaluate(batch)
    finally:
        module.fail = False
    assert len(calls) == 2
    assert states_equal(before, state_copy(module)) and hook_total(module) == 0


def test_randomization_runs_gradient_free_methods_on_onnx(small_onnx_path, small_inputs):
    onnx_model = cnnviz_core.load_model(small_onnx_path)
    logits = onnx_model.logits(small_inputs)
    batch = method_batch("occlusion", onnx_model, small_inputs, ["a", "b"], window=8, stride=8)
    scores = randomization(onnx_model, layers=2).evaluate(batch)
    assert scores.curves["spearman"].shape == (2, 2) and np.isfinite(scores.scores).all()
    np.testing.assert_array_equal(onnx_model.logits(small_inputs), logits)  # the model is back as it was
    assert cnnviz_core.missing_capabilities(cnnviz_core.get_registry().methods["gradcam"], onnx_model) == {"gradients"}


def test_random_logit_by_hand_on_a_linear_model():
    # saliency of a linear model is max_c |W_class| per pixel: the map of each class is known without the image
    net = LinearNet(height=8, width=8, classes=2, seed=1)
    adapter = cnnviz_core.load_model(net, input_size=(8, 8))
    inputs = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    batch = method_batch("saliency", adapter, inputs, ["x", "y"], target=[0, 1])
    result = RandomLogit(adapter, RandomLogit.make_params()).evaluate(batch)
    weight = net.fc.weight.detach().numpy().reshape(2, 3, 8, 8)
    by_class = np.abs(weight).max(axis=1)
    assert result.extras["random_class"].tolist() == [1, 0]  # two classes: the other one
    assert result.scores == pytest.approx([ssim(by_class[0], by_class[1])] * 2)
    assert result.scores[0] < 0.5
    # a map blind to the class (an edge detector) is the same for any class: SSIM 1
    assert RandomLogit(adapter, RandomLogit.make_params()).evaluate(sobel_batch(batch)).scores.tolist() == [1.0, 1.0]


def test_random_logit_draws_per_image_not_per_batch():
    adapter = small_torch_adapter()
    metric = RandomLogit(adapter, RandomLogit.make_params(seed=5))
    inputs = np.zeros((3, 3, 32, 32), dtype=np.float32)

    def batch(names, classes):
        return MetricBatch(inputs=inputs[:len(names)], maps=np.zeros((len(names), 32, 32)), classes=np.asarray(classes),
                           names=names, method="m", explain=lambda x, c: np.zeros((len(x), 32, 32)))

    together = metric.other_classes(batch(["a", "b", "c"], [0, 1, 2]))
    alone = [metric.other_classes(batch([name], [cls]))[0] for name, cls in zip("abc", [0, 1, 2])]
    assert together.tolist() == alone
    assert all(other != cls and 0 <= other < 5 for other, cls in zip(together, [0, 1, 2]))
