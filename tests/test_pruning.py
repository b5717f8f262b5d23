"""pruning: global magnitude pruning on a trained digits CNN with real labels
(checked against an independently pruned copy of the model), weights restored
bit for bit on success and on error, ONNX against torch, and the pretrained
EfficientNet-Lite0 on photographs."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_core.cli import main as cli_main
from cnnviz_core.errors import InputError

from cnnviz_plugins.analysis.pruning.magnitude import global_cuts, prune

from conftest import state_copy, states_equal
from digits import as_images, digits_adapter, digits_split, write_digits_folder
from digits import held_out_accuracy

SPARSITIES = "0,20,40,60,80,90,95"


@pytest.fixture(scope="module")
def digits():
    return digits_adapter()


@pytest.fixture(scope="module")
def test_set():
    """The digits test split as (image, label) pairs, and the inputs the dataset makes of them."""
    _, _, pixels, labels = digits_split()
    images = as_images(pixels)
    return list(zip(images, labels.tolist())), labels, [Image.fromarray(i) for i in images]


@pytest.fixture(scope="module")
def torch_curve(digits, test_set):
    before = state_copy(digits.module)
    result = cnnviz_core.run("pruning", digits, test_set[0], sparsities=SPARSITIES, batch_size=120)
    return result, before


def pruned_accuracy(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, sparsity: float) -> float:
    """Reference: a copy of the model with its globally smallest conv/linear weights zeroed."""
    pruned = copy.deepcopy(model)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(sparsity / 100 * magnitudes.numel())
    with torch.no_grad():
        if count:
            threshold = magnitudes.kthvalue(count).values
            for w in weights:
                w[w.abs() <= threshold] = 0
        predicted = pruned(torch.from_numpy(inputs)).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def test_cuts_prune_exact_counts_through_ties_in_logical_order_whatever_the_layout():
    first = np.array([[0.0, 0.5, -0.5], [0.1, 0.0, 0.5]], np.float32)
    second = np.array([0.5, -0.1, 0.0, 2.0], np.float32)  # |w| sorted: 0 0 0 .1 .1 .5 .5 .5 .5 2
    cuts = global_cuts([first, second], np.array([0, 20, 40, 70, 100]))
    assert [c.count for c in cuts] == [0, 2, 4, 7, 10] and [c.threshold for c in cuts] == pytest.approx([0, 0, 0.1, 0.5, 2.0])
    assert cuts[1].ties == (2, 0) and cuts[3].ties == (2, 0)  # ties go in layer order, then flat order
    # a channels-last torch weight as the adapter hands it over (a strided view) prunes as its contiguous copy
    kernel = np.stack([first, -first, first])[None]  # (1, 3, 2, 3): ties across channels
    channels_last = torch.from_numpy(kernel).contiguous(memory_format=torch.channels_last).numpy()
    assert not channels_last.flags.c_contiguous
    for cut in global_cuts([kernel, second], np.array([10, 30, 60])):
        assert np.array_equal(prune(channels_last, cut, 0), prune(kernel, cut, 0))
    for cut in cuts:
        masks = [cut.mask(np.abs(first), 0), cut.mask(np.abs(second), 1)]
        assert sum(int(m.sum()) for m in masks) == cut.count
        for layer, (weight, mask) in enumerate(zip((first, second), masks)):
            assert np.all(np.abs(weight[mask]) <= cut.threshold) and np.all(np.abs(weight[~mask]) >= cut.threshold)
            assert np.array_equal(prune(weight, cut, layer) == 0, mask | (weight == 0))


def test_curve_starts_at_the_models_accuracy_and_falls(digits, test_set, torch_curve):
    result, _ = torch_curve
    pairs, labels, images = test_set
    inputs, _ = digits.prepare(images)
    assert np.array_equal(result.sparsities, [0, 20, 40, 60, 80, 90, 95])
    unpruned = pruned_accuracy(digits.module, inputs, labels, 0)
    assert result.accuracy[0] == pytest.approx(unpruned, abs=1e-12)
    assert abs(result.accuracy[0] - held_out_accuracy(digits.module)) <= 2 / len(labels)  # uint8 images: at most a rounding flip
    assert result.agreement[0] == 1.0 and result.accuracy[0] > 0.95
    assert result.accuracy[-1] < result.accuracy[0] - 0.3  # 95 % of the weights gone: far worse
    assert result.accuracy[1] >= result.accuracy[0] - 0.02  # 20 % of the smallest weights barely matter
    assert np.all(np.diff(result.accuracy) <= 0.02) and np.all(np.diff(result.agreement) <= 0.02)  # monotone-ish
    for index in (3, 4, 6):  # 60, 80, 95 %: the same numbers as an independently pruned copy
        expected = pruned_accuracy(digits.module, inputs, labels, result.sparsities[index])
        assert result.accuracy[index] == pytest.approx(expected, abs=1.5 / len(labels))
    assert result.metadata["images"] == len(pairs) and result.facts["labelled_images"] == len(pairs)


def test_counts_thresholds_layers_and_histograms(digits, torch_curve):
    result, _ = torch_curve
    module = digits.module
    layers = {"features.0": module.features[0], "features.2": module.features[2], "features.5": module.features[5], "fc": module.fc}
    sizes = np.array([m.weight.numel() for m in layers.values()])
    assert [row["name"] for row in result.facts["layers"]] == list(layers) and result.facts["weights"] == sizes.sum()
    pruned = np.array([row["pruned"] for row in result.facts["sparsities"]])
    assert np.array_equal(pruned, np.rint(result.sparsities / 100 * sizes.sum()))
    assert np.allclose(result.layer_sparsity @ sizes, pruned)  # per-layer sparsities add up to the global one
    assert np.all(np.diff(result.thresholds) > 0) and result.thresholds[0] == 0
    magnitudes = np.sort(np.concatenate([m.weight.detach().abs().flatten().numpy() for m in layers.values()]))
    assert result.thresholds[4] == magnitudes[pruned[4] - 1]  # the largest weight pruned at 80 %
    for row, counts, (name, layer) in zip(result.facts["layers"], result.histogram_counts, layers.items()):
        w = layer.weight.detach().double().numpy()
        assert counts.sum() == w.size == row["count"]
        assert row["std"] == pytest.approx(w.std()) and row["fraction_below"] == pytest.approx(np.mean(np.abs(w) < 0.1 * w.std()))
    assert result.histogram_edges.shape == (4, 82) and np.allclose(result.histogram_edges[:, 0], -result.histogram_edges[:, -1])
    assert result.pictures["curve"].ndim == 3 and result.pictures["histograms"].shape[2] == 3


def test_weights_equal_bit_for_bit_after_success(digits, torch_curve):
    _, before = torch_curve
    assert states_equal(before, state_copy(digits.module))


def test_weights_restored_after_an_error_midway(digits, test_set, monkeypatch):
    before = state_copy(digits.module)
    forward = digits.logits
    calls, zeros_seen = [], []

    def failing(inputs):
        calls.append(len(inputs))
        if len(calls) == 4:  # the shared forward, then the 20 % and 40 % models: fail inside the 60 % one
            zeros_seen.append(float((digits.module.features[5].weight == 0).float().mean()))
            raise RuntimeError("forward failed")
        return forward(inputs)

    monkeypatch.setattr(digits, "logits", failing)
    with pytest.raises(RuntimeError, match="forward failed"):
        cnnviz_core.run("pruning", digits, test_set[0][:50], sparsities=SPARSITIES)
    assert zeros_seen and zeros_seen[0] > 0.3  # the failure did happen with pruned weights in place
    assert states_equal(before, state_copy(digits.module))


def test_onnx_curve_matches_torch_and_the_file_is_untouched(digits, test_set, torch_curve, tmp_path):
    path = export_onnx(digits, tmp_path / "digits.onnx")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    result = cnnviz_core.run("pruning", path, test_set[0], sparsities=SPARSITIES, batch_size=120)
    expected, _ = torch_curve
    assert [row["name"] for row in result.facts["layers"]] == [row["name"] for row in expected.facts["layers"]]
    np.testing.assert_allclose(result.thresholds, expected.thresholds, rtol=1e-6)
    np.testing.assert_allclose(result.accuracy, expected.accuracy, atol=1.5 / len(test_set[1]))
    np.testing.assert_allclose(result.agreement, expected.agreement, atol=1.5 / len(test_set[1]))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest


def test_cli_on_a_labelled_folder_matches_class_folders_to_labels(digits, tmp_path):
    folder = write_digits_folder(tmp_path / "digits", per_class=6)
    path = export_onnx(digits, tmp_path / "digits.onnx")
    out = tmp_path / "out"
    assert cli_main(["run", "pruning", "--model", path, "--dataset", folder, "--sparsities", "0,50,95",
                     "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "pruning.json").read_text())
    levels = record["facts"]["sparsities"]
    assert [row["sparsity"] for row in levels] == [0, 50, 95] and record["facts"]["labelled_images"] == 60
    assert levels[0]["accuracy"] > 0.9 and levels[0]["agreement"] == 1.0 and levels[2]["accuracy"] < levels[0]["accuracy"]
    assert (out / "pruning.curve.png").exists() and (out / "pruning.histograms.png").exists()


def test_bad_sparsities_are_refused_before_any_work(digits, test_set):
    for bad, message in (("0,abc", "percentages separated by commas"), ("10,150", r"in \[0, 100\]")):
        with pytest.raises(InputError, match=message):
            cnnviz_core.run("pruning", digits, test_set[0][:4], sparsities=bad)


@pytest.mark.slow
def test_lite0_on_photographs_agrees_with_itself_unpruned(lite0, photos):
    before = state_copy(lite0.module)
    result = cnnviz_core.run("pruning", lite0, [photos["chelsea"], photos["coffee"]], sparsities="90")
    assert np.array_equal(result.sparsities, [0, 90])  # 0, the reference, always included
    assert result.agreement[0] == 1.0 and np.isnan(result.accuracy).all()  # no labels: agreement only
    assert result.facts["sparsities"][1]["accuracy"] is None and result.facts["labelled_images"] == 0
    prunable = [m for m in lite0.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert result.facts["weights"] == sum(m.weight.numel() for m in prunable) and len(result.facts["layers"]) == len(prunable)
    assert result.facts["sparsities"][1]["pruned"] == round(0.9 * result.facts["weights"])
    assert states_equal(before, state_copy(lite0.module))
