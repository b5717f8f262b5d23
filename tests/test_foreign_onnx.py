"""ONNX files made elsewhere: a channels-last input (B, H, W, 3) as TensorFlow
exports make, a batch fixed at 1 or dynamic, float16 weights and inputs, and
preprocessing from a partial sidecar, metadata props or options — or a
warning when none is given. Each file is exported here from the seeded
SmallConvNet; the gradient-free methods on it match the torch model."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import MethodWarning, ModelLoadError
from tiny_models import SmallConvNet

SIZE = 32
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
CONFIG = PreprocessConfig(input_size=(SIZE, SIZE), mean=MEAN, std=STD)
FORWARD_ONLY = {"occlusion": dict(window=8, stride=8), "rise": dict(masks=64, grid=4), "score_cam": {}, "cam": {}}
pytestmark = pytest.mark.slow  # ONNX exports and runtime sessions


class ChannelsLast(torch.nn.Module):
    """A network that takes (B, H, W, 3), like a TensorFlow model's export."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def _export(module, path, *, channels_last=False, fixed_batch=False, half=False, props=None, channels=3) -> str:
    module = module.eval()
    if half:
        module = module.half()
    shape = (1, SIZE, SIZE, channels) if channels_last else (1, channels, SIZE, SIZE)
    dummy = torch.zeros(shape, dtype=torch.float16 if half else torch.float32)
    axes = None if fixed_batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), input_names=["input"], output_names=["logits"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    if props:
        model = onnx.load(str(path))
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    return str(path)


def _reference(half=False) -> TorchAdapter:
    """The float32 torch model (with the weights rounded to float16 where the ONNX copy is half)."""
    net = SmallConvNet().eval()
    if half:
        net = net.half().float()
    return TorchAdapter(net, "small", CONFIG)


def _inputs(count=3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


def _assert_methods_match(onnx_model, torch_model, tolerance):
    inputs = _inputs(2)
    for name, params in FORWARD_ONLY.items():
        ours = cnnviz_core.run(name, onnx_model, inputs, normalized=True, target=[1, 3], **params).maps
        expected = cnnviz_core.run(name, torch_model, inputs, normalized=True, target=[1, 3], **params).maps
        assert ours.shape == expected.shape == (2, SIZE, SIZE) and ours.dtype == np.float32
        scale = np.abs(expected).max()
        assert np.abs(ours - expected).max() <= tolerance * scale, name


def test_channels_last_graph_fixed_at_batch_one_runs_like_the_torch_model(tmp_path):
    path = _export(ChannelsLast(SmallConvNet()), tmp_path / "nhwc.onnx", channels_last=True, fixed_batch=True)
    model = cnnviz_core.load_model(path, mean=MEAN, std=STD)
    reference = _reference()

    assert model.channels_last and model.fixed_batch == 1
    assert model.config.input_size == (SIZE, SIZE)  # read from (1, H, W, 3), not from its last two dimensions
    inputs = _inputs(3)  # three items through a graph fixed at one
    np.testing.assert_allclose(model.logits(inputs), reference.logits(inputs), atol=1e-4)
    assert model.layer_shapes([model.default_layer()])[model.default_layer()] == (1, 16, SIZE // 2, SIZE // 2)
    _assert_methods_match(model, reference, tolerance=1e-4)


def test_float16_graph_takes_float32_batches_and_returns_float32(tmp_path):
    path = _export(SmallConvNet(), tmp_path / "half.onnx", half=True)
    model = cnnviz_core.load_model(path, mean=MEAN, std=STD)
    reference = _reference(half=True)

    assert model.fixed_batch is None
    inputs = _inputs(3)
    logits = model.logits(inputs)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference.logits(inputs), atol=2e-2 * np.abs(logits).max())
    _, activations = model.logits_and_activations(inputs, [model.default_layer()])
    assert activations[model.default_layer()].dtype == np.float32
    assert all(w.dtype != np.float16 for w in model.weights().values())
    _assert_methods_match(model, reference, tolerance=3e-2)


def test_tensorflow_like_file_reads_its_preprocessing_from_metadata_props(tmp_path):
    """Channels last, float16, batch fixed at 1 and no sidecar: the metadata props say how it was trained."""
    props = {"cnnviz.mean": json.dumps(MEAN), "cnnviz.std": json.dumps(STD), "cnnviz.interpolation": "bicubic"}
    path = _export(ChannelsLast(SmallConvNet()), tmp_path / "tf_like.onnx", channels_last=True, fixed_batch=True, half=True,
                   props=props)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MethodWarning)  # preprocessing given: no warning
        model = cnnviz_core.load_model(path)
    assert model.config == PreprocessConfig(input_size=(SIZE, SIZE), mean=MEAN, std=STD, interpolation="bicubic")

    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)  # raw pixels, normalized by the props
    ours = cnnviz_core.run("occlusion", model, pixels, target=[0, 2], window=8, stride=8)
    expected = cnnviz_core.run("occlusion", _reference(half=True), pixels, target=[0, 2], window=8, stride=8)
    assert np.abs(ours.maps - expected.maps).max() <= 3e-2 * np.abs(expected.maps).max()


def test_partial_sidecar_is_completed_from_metadata_props_and_options(tmp_path):
    """The sidecar gives labels and the interpolation, the props the mean, an option the std."""
    path = _export(SmallConvNet(), tmp_path / "partial.onnx", props={"cnnviz.mean": json.dumps(MEAN)})
    labels = ["a", "b", "c", "d", "e"]
    (tmp_path / "partial.onnx.json").write_text(json.dumps({"labels": labels, "config": {"interpolation": "nearest"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MethodWarning)
        model = cnnviz_core.load_model(path, std=STD)
    assert model.config == PreprocessConfig(input_size=(SIZE, SIZE), mean=MEAN, std=STD, interpolation="nearest")
    assert model.labels == tuple(labels)


def test_a_foreign_file_without_preprocessing_warns_instead_of_assuming_silently(tmp_path):
    path = _export(ChannelsLast(SmallConvNet()), tmp_path / "bare.onnx", channels_last=True)
    with pytest.warns(MethodWarning, match=r"carries no preprocessing.*--mean R G B --std R G B"):
        model = cnnviz_core.load_model(path)
    assert model.config.input_size == (SIZE, SIZE)


def test_inputs_that_are_not_images_are_refused_at_load(tmp_path):
    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=1, keepdim=True)

    path = tmp_path / "flat.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Flat(), (torch.zeros(1, 10),), str(path), input_names=["input"], dynamo=False)
    with pytest.raises(ModelLoadError, match=r"2-D input.*\(B, 3, H, W\) or \(B, H, W, 3\)"):
        cnnviz_core.load_model(str(path), mean=MEAN, std=STD)


def test_a_one_channel_graph_is_fed_the_luminance_like_the_torch_model(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=1, layers=(1, 1, 1, 1),
                            channels=(8, 16, 32, 64)).eval()
    path = _export(net, tmp_path / "grey.onnx", channels=1)  # takes (B, 1, 32, 32)
    grey = cnnviz_core.load_model(path, mean=MEAN, std=STD)
    reference = cnnviz_core.load_model(net, input_size=(SIZE, SIZE), mean=MEAN, std=STD)
    inputs = _inputs(3)
    np.testing.assert_allclose(grey.logits(inputs), reference.logits(inputs), rtol=1e-4, atol=1e-4)
    ours = cnnviz_core.run("occlusion", grey, inputs, normalized=True, target=[0, 1, 2], window=8, stride=8).maps
    expected = cnnviz_core.run("occlusion", reference, inputs, normalized=True, target=[0, 1, 2], window=8, stride=8).maps
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()

    two = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Conv2d(2, 4, 3), (torch.zeros(1, 2, SIZE, SIZE),), str(two), dynamo=False)
    with pytest.raises(ModelLoadError, match=r"takes 2-channel inputs \[1, 2, 32, 32\]; cnnviz feeds RGB images"):
        cnnviz_core.load_model(str(two), mean=MEAN, std=STD)
