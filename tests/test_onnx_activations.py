"""Intermediate tensors and weights of ONNX models, against the torch model
they were exported from; and the torch adapter's side of the same contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_core.capabilities import Capability

from conftest import small_torch_adapter


@pytest.fixture(scope="module")
def lite0_pair(lite0, lite0_onnx, photos):
    onnx_model = cnnviz_core.load_model(lite0_onnx)
    inputs, _ = lite0.prepare([photos["chelsea"], photos["coffee"]])
    return lite0, onnx_model, inputs


def test_onnx_adapter_declares_activations_and_weights(lite0_pair):
    _, onnx_model, _ = lite0_pair
    assert {Capability.ACTIVATIONS, Capability.WEIGHTS} <= onnx_model.capabilities
    assert Capability.GRADIENTS not in onnx_model.capabilities


def test_node_activations_agree_with_torch_hooks(lite0_pair):
    """torch.onnx names nodes after the module path, but folds each eval-mode
    batch norm into the convolution before it: the node /conv_head/Conv outputs
    conv_head followed by bn2's batch norm, which torch shows as bn2.drop (the
    Identity between bn2's normalization and its activation)."""
    lite0, onnx_model, inputs = lite0_pair
    node = "/conv_head/Conv"
    assert node in onnx_model.layers()
    onnx_out = onnx_model.activations(inputs, [node])[node]
    torch_outputs = lite0.activations(inputs, ["conv_head", "bn2.drop"])
    bn = lite0.module.bn2
    with torch.no_grad():
        normalized = F.batch_norm(
            torch.from_numpy(torch_outputs["conv_head"]), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        ).numpy()
    assert onnx_out.shape == normalized.shape == (2, 1280, 7, 7)
    for expected in (normalized, torch_outputs["bn2.drop"]):
        assert np.abs(onnx_out - expected).max() <= 1e-4 * np.abs(expected).max()


def test_tensor_names_and_node_names_in_one_run_with_logits(lite0_pair):
    lite0, onnx_model, inputs = lite0_pair
    names = ["/conv_head/Conv_output_0", "/bn2/act/Clip", "/blocks/blocks.6/blocks.6.0/conv_pwl/Conv"]
    logits, outputs = onnx_model.logits_and_activations(inputs, names)
    assert list(outputs) == names  # keyed by the names as given
    np.testing.assert_allclose(logits, lite0.logits(inputs), atol=1e-4)
    # batch norms folded into the convolutions: see the test above
    torch_logits, torch_outputs = lite0.logits_and_activations(inputs, ["bn2.drop", "bn2", "blocks.6.0.bn3.drop"])
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4)
    for onnx_name, torch_name in zip(names, torch_outputs):
        expected = torch_outputs[torch_name]
        assert np.abs(outputs[onnx_name] - expected).max() <= 1e-4 * np.abs(expected).max(), onnx_name
    # the same set again is served by the cached session and gives the same values
    again = onnx_model.activations(inputs, list(reversed(names)))
    for name in names:
        np.testing.assert_array_equal(again[name], outputs[name])


def test_unknown_names_raise_layer_not_found(lite0_pair):
    lite0, onnx_model, inputs = lite0_pair
    with pytest.raises(cnnviz_core.LayerNotFoundError, match="no layer 'conv_head'"):
        onnx_model.activations(inputs[:1], ["conv_head"])  # a torch module name, not an ONNX node
    with pytest.raises(cnnviz_core.LayerNotFoundError):
        lite0.activations(inputs[:1], ["/conv_head/Conv"])


def test_weights_are_the_initializers(lite0_pair):
    lite0, onnx_model, _ = lite0_pair
    weights = onnx_model.weights()
    torch_weights = lite0.weights()
    np.testing.assert_array_equal(weights["classifier.weight"], torch_weights["classifier.weight"])
    np.testing.assert_array_equal(weights["classifier.bias"], torch_weights["classifier.bias"])
    assert all(isinstance(v, np.ndarray) for v in weights.values())


def test_fixed_batch_of_one_is_looped(tmp_path, small_inputs):
    adapter = small_torch_adapter()
    onnx_model = cnnviz_core.load_model(export_onnx(adapter, tmp_path / "fixed.onnx", dynamic_batch=False))
    assert onnx_model.fixed_batch == 1
    logits, outputs = onnx_model.logits_and_activations(small_inputs, ["/features/features.5/Clip"])
    torch_logits, torch_outputs = adapter.logits_and_activations(small_inputs, ["features.5"])
    np.testing.assert_allclose(logits, torch_logits, atol=1e-5)
    np.testing.assert_allclose(outputs["/features/features.5/Clip"], torch_outputs["features.5"], atol=1e-5)


def test_torch_activations_are_copied_before_in_place_ops(small_inputs):
    """SmallConvNet's batch norm is followed by ReLU(inplace=True): the batch
    norm's output must be returned as it was, negative values included."""
    adapter = small_torch_adapter()
    outputs = adapter.activations(small_inputs, ["features.1", "features.2"])
    assert outputs["features.1"].min() < 0
    np.testing.assert_array_equal(outputs["features.2"], np.maximum(outputs["features.1"], 0))


def test_default_layer_is_measured_where_shape_inference_gives_up(lite0_pair):
    # lite0's TF-"same" padding is computed at run time, so ONNX shape
    # inference cannot size the later maps; the adapter measures them instead
    torch_adapter, onnx_adapter, _ = lite0_pair
    layer = onnx_adapter.default_layer()
    maps = onnx_adapter.activations(np.zeros((1, 3, 224, 224), np.float32), [layer])[layer]
    expected = torch_adapter.activations(np.zeros((1, 3, 224, 224), np.float32), [torch_adapter.default_layer()])
    assert maps.shape == next(iter(expected.values())).shape == (1, 1280, 7, 7)
