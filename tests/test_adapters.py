"""Torch and ONNX adapters: loading, preprocessing, layers, agreement."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.onnx_adapter import OnnxAdapter
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.capabilities import Capability
from cnnviz_core.config import PreprocessConfig

from conftest import SMALL_CONFIG, small_torch_adapter


def test_builtin_model_classifies_sample_photos(lite0, photos):
    inputs, names = lite0.prepare([photos["chelsea"], photos["coffee"]])
    assert names == ["chelsea", "coffee"] and inputs.shape == (2, 3, 224, 224)
    logits = lite0.logits(inputs)
    probs = torch.from_numpy(logits).softmax(1).numpy()
    assert list(logits.argmax(1)) == [285, 967]
    assert lite0.labels[285] == "Egyptian cat" and lite0.labels[967] == "espresso"
    assert probs[0, 285] == pytest.approx(0.77, abs=0.02) and probs[1, 967] == pytest.approx(0.90, abs=0.02)
    assert lite0.config == PreprocessConfig((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")


def test_onnx_export_agrees_with_torch_within_1e4(lite0, lite0_onnx, photos):
    onnx_model = cnnviz_core.load_model(lite0_onnx)
    assert isinstance(onnx_model, OnnxAdapter)
    assert onnx_model.config == lite0.config and onnx_model.labels == lite0.labels  # from the sidecar
    assert onnx_model.capabilities == frozenset({Capability.FORWARD, Capability.ACTIVATIONS, Capability.WEIGHTS})
    inputs, _ = onnx_model.prepare([photos["chelsea"], photos["coffee"], photos["astronaut"]])
    np.testing.assert_allclose(onnx_model.logits(inputs), lite0.logits(inputs), atol=1e-4)
    assert onnx_model.num_classes == 1000
    assert "CPUExecutionProvider" in onnx_model.describe()["providers"]


def test_onnx_fixed_batch_of_one_is_looped(tmp_path, small_inputs):
    adapter = small_torch_adapter()
    path = export_onnx(adapter, tmp_path / "fixed.onnx", dynamic_batch=False)
    onnx_model = cnnviz_core.load_model(path)
    assert onnx_model.fixed_batch == 1
    np.testing.assert_allclose(onnx_model.logits(small_inputs), adapter.logits(small_inputs), atol=1e-5)


def test_onnx_without_sidecar_takes_options_and_graph_size(tmp_path):
    path = export_onnx(small_torch_adapter(), tmp_path / "bare.onnx", dynamic_batch=False)
    os.remove(path + ".json")
    plain = cnnviz_core.load_model(path)
    assert plain.config.input_size == (32, 32)  # read from the graph's fixed input shape
    custom = cnnviz_core.load_model(path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert custom.config == SMALL_CONFIG


def test_onnx_default_layer_is_a_spatial_node(small_onnx_path):
    onnx_model = cnnviz_core.load_model(small_onnx_path)
    layers = onnx_model.layers()
    assert onnx_model.default_layer() in layers
    assert "Relu" in onnx_model.default_layer() or "Clip" in onnx_model.default_layer()


def test_bad_onnx_files_are_refused(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(cnnviz_core.ModelLoadError, match="broken.onnx"):
        cnnviz_core.load_model(str(broken))
    with pytest.raises(cnnviz_core.ModelLoadError, match="does not exist"):
        cnnviz_core.load_model(str(tmp_path / "missing.onnx"))
    good = export_onnx(small_torch_adapter(), tmp_path / "ok.onnx")
    with open(good + ".json", "w") as stream:
        stream.write("{not json")
    with pytest.raises(cnnviz_core.ModelLoadError, match="sidecar"):
        cnnviz_core.load_model(good)


def test_onnx_cuda_request_without_cuda_is_a_clear_error(small_onnx_path):
    with pytest.raises(cnnviz_core.InputError, match="CUDA"):
        cnnviz_core.load_model(small_onnx_path, device="cuda:0")


def test_timm_model_by_name_with_weights_file(tmp_path):
    model = cnnviz_core.load_model("timm:resnet18")
    assert model.config.input_size == (224, 224) and model.num_classes == 1000
    assert model.labels is not None and model.default_layer() == "layer4"
    state = {k: torch.full_like(v, 0.01) if v.is_floating_point() else v for k, v in model.module.state_dict().items()}
    torch.save(state, tmp_path / "weights.pth")
    loaded = cnnviz_core.load_model("timm:resnet18", weights=str(tmp_path / "weights.pth"))
    assert torch.equal(loaded.module.conv1.weight, torch.full_like(loaded.module.conv1.weight, 0.01))
    from safetensors.torch import save_file

    save_file(state, tmp_path / "weights.safetensors")
    loaded = cnnviz_core.load_model("timm:resnet18", weights=str(tmp_path / "weights.safetensors"))
    assert torch.equal(loaded.module.fc.weight, torch.full_like(loaded.module.fc.weight, 0.01))


def test_bad_model_specs_are_refused(tmp_path):
    with pytest.raises(cnnviz_core.ModelLoadError, match="timm has no model"):
        cnnviz_core.load_model("timm:resnet_does_not_exist")
    with pytest.raises(cnnviz_core.ModelLoadError, match="cannot load model"):
        cnnviz_core.load_model("no_such_model")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(cnnviz_core.ModelLoadError, match="do not fit"):
        cnnviz_core.load_model("timm:resnet18", weights=str(tmp_path / "wrong.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"garbage")
    with pytest.raises(cnnviz_core.ModelLoadError, match="cannot read weights"):
        cnnviz_core.load_model("timm:resnet18", weights=str(tmp_path / "garbage.pth"))


def test_any_module_with_given_preprocessing(small_inputs):
    module = small_torch_adapter().module
    adapter = cnnviz_core.load_model(module, input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert isinstance(adapter, TorchAdapter) and adapter.module is module
    assert adapter.config == SMALL_CONFIG and adapter.num_classes == 5 and adapter.labels is None
    assert adapter.layers()[:2] == ["features", "features.0"]
    with pytest.raises(cnnviz_core.LayerNotFoundError, match="no layer 'features.9'"):
        adapter.get_layer("features.9")
    with pytest.raises(cnnviz_core.InputError, match="unknown model option"):
        cnnviz_core.load_model(module, colour="blue")


def test_logits_do_not_change_training_mode():
    adapter = small_torch_adapter()
    adapter.module.train()
    adapter.logits(np.zeros((1, 3, 32, 32), np.float32))
    assert adapter.module.training and adapter.module.features[1].training


def test_label_targets_resolve_with_names_and_synonyms(lite0):
    from cnnviz_core.targets import parse_target

    assert parse_target("ostrich", lite0.num_classes, lite0.labels).class_index == 9
    assert parse_target("Egyptian cat", lite0.num_classes, lite0.labels).class_index == 285
    with pytest.raises(cnnviz_core.TargetError, match="out of range"):
        parse_target(1000, lite0.num_classes, lite0.labels)


def test_export_sidecar_records_preprocessing(lite0_onnx):
    with open(lite0_onnx + ".json") as stream:
        sidecar = json.load(stream)
    assert sidecar["config"]["interpolation"] == "bicubic" and sidecar["config"]["mean"] == [0.5, 0.5, 0.5]
    assert len(sidecar["labels"]) == 1000 and sidecar["name"] == "efficientnet_lite0"


def test_builtin_model_takes_preprocessing_overrides_and_refuses_unknown_options():
    small = cnnviz_core.load_model("efficientnet_lite0", input_size=(96, 96))
    assert small.config.input_size == (96, 96) and small.config.mean == (0.5, 0.5, 0.5)
    assert small.logits(np.zeros((1, 3, 96, 96), np.float32)).shape == (1, 1000)
    with pytest.raises(cnnviz_core.InputError, match="input_size"):
        cnnviz_core.load_model("efficientnet_lite0", colour="red")
