"""CAM against hand-computed values, against Grad-CAM, across adapters, on the
pretrained model, and its refusal of heads that are not GAP + linear."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.cli import main
from conftest import CAT_BOX, hook_total, in_box, output_files

from test_gradcam import IDENTITY, UPSAMPLE, tiny_input
from tiny_models import TinyCamNet

# TinyCamNet on tiny_input: A0 = [[1, 0], [0, 1]], A1 = [[0.5, 2], [0, 0]];
# fc weights w_c = (1, -2), (0.5, 3), (-1, 1); biases 0.1, -0.2, 0.3.
A0, A1 = np.array([[1, 0], [0, 1.0]]), np.array([[0.5, 2], [0, 0.0]])


@pytest.mark.parametrize(
    "target, cls, layer_map, logit",
    [
        (0, 0, A0 - 2 * A1, -0.65),           # [[0, -4], [0, 1]]: negative values kept (no ReLU)
        (1, 1, 0.5 * A0 + 3 * A1, 1.925),     # [[2, 6], [0, 0.5]]
        (2, 2, -A0 + A1, 0.425),              # [[-0.5, 2], [0, -1]]
        (None, 1, 0.5 * A0 + 3 * A1, 1.925),  # top-1 is class 1
    ],
)
def test_cam_matches_hand_computation(target, cls, layer_map, logit):
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    result = cnnviz_core.run("cam", adapter, tiny_input(), target=target)
    np.testing.assert_allclose(result.extras["layer_map"][0], layer_map, atol=1e-6)
    np.testing.assert_allclose(result.maps[0], UPSAMPLE @ layer_map @ UPSAMPLE.T, atol=1e-6)
    assert result.classes[0] == cls
    np.testing.assert_allclose(result.scores[0], logit, atol=1e-5)
    # the map's mean plus the classifier's bias is the logit (Zhou et al.'s identity)
    bias = adapter.module.fc.bias.detach().numpy()[cls]
    assert result.extras["layer_map"][0].mean() + bias == pytest.approx(logit, abs=1e-5)
    assert result.maps.dtype == np.float32 and result.maps.shape == (1, 4, 4)
    assert hook_total(adapter.module) == 0


def test_cam_on_tiny_onnx_matches_torch(tmp_path):
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    onnx_model = cnnviz_core.load_model(export_onnx(adapter, tmp_path / "tiny.onnx"))
    inputs = np.concatenate([tiny_input(), np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)])
    for target in (0, 2, "top1"):
        torch_result = cnnviz_core.run("cam", adapter, inputs, target=target)
        onnx_result = cnnviz_core.run("cam", onnx_model, inputs, target=target)
        np.testing.assert_array_equal(onnx_result.classes, torch_result.classes)
        np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-5)
        np.testing.assert_allclose(onnx_result.scores, torch_result.scores, atol=1e-5)


@pytest.mark.parametrize("target", [0, 1, 2])
def test_gradcam_is_relu_of_cam_over_hw_on_tiny_net(target):
    """α_k = w_ck / (h·w) exactly, so Grad-CAM = ReLU(CAM) / (h·w)."""
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    cam = cnnviz_core.run("cam", adapter, tiny_input(), target=target)
    gradcam = cnnviz_core.run("gradcam", adapter, tiny_input(), target=target, layer="features")
    np.testing.assert_allclose(gradcam.extras["layer_map"], np.maximum(cam.extras["layer_map"], 0) / 4, atol=1e-6)


def test_gradcam_and_cam_agree_up_to_a_positive_scale_on_lite0(lite0, photos):
    inputs, _ = lite0.prepare([photos["chelsea"], photos["coffee"]])
    cam = cnnviz_core.run("cam", lite0, inputs, target=["Egyptian cat", "espresso"])
    gradcam = cnnviz_core.run("gradcam", lite0, inputs, target=["Egyptian cat", "espresso"])  # default layer bn2
    for i in range(2):
        positive = np.maximum(cam.extras["layer_map"][i], 0)
        reference = gradcam.extras["layer_map"][i]
        scale = float((positive * reference).sum() / (positive * positive).sum())  # least squares
        assert scale > 0 and scale == pytest.approx(1 / 49, rel=1e-3)  # 7 x 7 positions
        np.testing.assert_allclose(scale * positive, reference, atol=1e-4 * reference.max())
        # after upsampling too: Grad-CAM upsamples ReLU(Σ α_k A_k)
        upsampled = F.interpolate(torch.from_numpy(positive)[None, None], size=(224, 224), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(scale * upsampled[0, 0].numpy(), gradcam.maps[i], atol=1e-4 * gradcam.maps[i].max())


def test_torch_and_onnx_cam_agree_on_lite0(lite0, lite0_onnx, photos):
    onnx_model = cnnviz_core.load_model(lite0_onnx)
    images = [photos["chelsea"], photos["coffee"], photos["cat_on_grey"]]
    torch_result = cnnviz_core.run("cam", lite0, images)
    onnx_result = cnnviz_core.run("cam", onnx_model, images)
    np.testing.assert_array_equal(onnx_result.classes, torch_result.classes)
    for i in range(len(images)):
        scale = np.abs(torch_result.maps[i]).max()
        np.testing.assert_allclose(onnx_result.maps[i], torch_result.maps[i], atol=1e-4 * scale)
    np.testing.assert_allclose(onnx_result.scores, torch_result.scores, atol=1e-3)


def test_cam_on_pretrained_model_peaks_on_the_cat(lite0, lite0_onnx, photos):
    images = [photos["chelsea"], photos["cat_on_grey"]]
    for model in (lite0, cnnviz_core.load_model(lite0_onnx)):
        result = cnnviz_core.run("cam", model, images, target="Egyptian cat")
        assert result.maps.shape == (2, 224, 224) and list(result.classes) == [285, 285]
        assert result.scores[0] > 8  # the cat's logit on the real photo
        assert in_box(result.maps[1])
        # the positive part of the map lies mostly on the fifth of the image the cat covers
        positive = np.maximum(result.maps[1], 0)
        assert positive[CAT_BOX].sum() / positive.sum() > 0.5
        assert result.maps.min() < 0  # raw CAM: not ReLU'd, not normalized


def test_cam_refuses_probability_score():
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    with pytest.raises(cnnviz_core.InputError, match="logit"):
        cnnviz_core.run("cam", adapter, tiny_input(), score="prob")


# -- heads that are not GAP + linear -----------------------------------------
class TwoLinearHead(nn.Module):
    """conv → ReLU → GAP → linear → ReLU → linear: an MLP head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.hidden(self.pool(self.features(x)).flatten(1))))


class FlattenHead(nn.Module):
    """VGG-style: the feature map flattened into a linear layer, no pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ConvHead(nn.Module):
    """A 1x1 convolution classifier before the pooling: no linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.classifier(self.features(x)).mean(dim=(2, 3))


class ScaledHead(TinyCamNet):
    """GAP + linear, but the logits are scaled after the linear layer."""

    def forward(self, x):
        return 2.0 * super().forward(x)


SMALL = cnnviz_core.PreprocessConfig(input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
HEADS = {
    "two_linear": (TwoLinearHead, "not the global average pool"),
    "flatten": (FlattenHead, "not the global average pool"),
    "conv": (ConvHead, "no nn.Linear"),
    "scaled": (ScaledHead, "not the model's output"),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_cam_refuses_other_heads_on_torch_saying_why_and_suggesting_gradcam(head):
    model_class, why = HEADS[head]
    adapter = TorchAdapter(model_class(), head, SMALL)
    adapter.module.train()
    with pytest.raises(cnnviz_core.MethodError) as caught:
        cnnviz_core.run("cam", adapter, np.zeros((1, 3, 8, 8), np.float32))
    message = str(caught.value)
    assert message.startswith("cam: ") and why in message and "gradcam" in message
    assert "global average pooling followed by one linear layer" in message
    assert hook_total(adapter.module) == 0 and adapter.module.training
    # Grad-CAM, which the message suggests, runs on it
    assert cnnviz_core.run("gradcam", adapter, np.zeros((1, 3, 8, 8), np.float32), layer="features").maps.shape == (1, 8, 8)


@pytest.mark.parametrize("head, why", [("two_linear", "Relu"), ("flatten", "not from global average pooling"), ("conv", "not from a linear layer")])
def test_cam_refuses_other_heads_on_onnx(head, why, tmp_path):
    path = export_onnx(TorchAdapter(HEADS[head][0](), head, SMALL), tmp_path / f"{head}.onnx")
    with pytest.raises(cnnviz_core.MethodError, match="gradcam") as caught:
        cnnviz_core.run("cam", cnnviz_core.load_model(path), np.zeros((1, 3, 8, 8), np.float32))
    assert why in str(caught.value) and "global average pooling followed by one linear layer" in str(caught.value)


def test_cli_runs_cam_on_onnx(capsys, photos, lite0_onnx, tmp_path):
    out = tmp_path / "cam"
    code = main(["run", "cam", "--model", lite0_onnx, "--image", photos["chelsea"], "--target", "Egyptian cat",
                 "--out", str(out), "--quiet"])
    assert code == 0
    stem = "cam.class285_Egyptian_cat"  # file names carry the target
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["method"] == "cam" and record["model"]["adapter"] == "onnx"
    assert record["explained"][0]["class"] == 285
    assert {f"{stem}.maps.npy", f"{stem}.layer_map.npy", f"chelsea.{stem}.heatmap.png", f"chelsea.{stem}.overlay.png"} <= set(output_files(out))
    assert np.load(out / f"{stem}.maps.npy").shape == (1, 224, 224)
    assert np.load(out / f"{stem}.layer_map.npy").shape == (1, 7, 7)


def test_cli_refusal_is_one_line_and_writes_nothing(capsys, tmp_path):
    path = export_onnx(TorchAdapter(TwoLinearHead(), "mlp_head", SMALL), tmp_path / "mlp.onnx")
    image = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (128, 128, 128)).save(image)
    capsys.readouterr()
    out = tmp_path / "never"
    code = main(["run", "cam", "--model", path, "--image", str(image), "--out", str(out), "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "gradcam" in stderr and "Traceback" not in stderr
    assert output_files(out) == []


# -- ONNX head patterns torch.onnx does not emit, on hand-built graphs ----------
def _handmade_onnx(path, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input → 1x1 Conv (3→2) → ReduceMean over H, W (opset 18: axes as an input)
    → MatMul + Add, or Gemm with transB=0 and alpha=2. Returns the conv weight
    and the effective classifier (classes, K) and bias."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    conv = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    matrix = rng.normal(size=(2, 3)).astype(np.float32)  # (K, classes), as MatMul and transB=0 Gemm take it
    bias = rng.normal(size=(3,)).astype(np.float32)
    initializers = [numpy_helper.from_array(conv, "conv.w"), numpy_helper.from_array(matrix, "fc.w"),
                    numpy_helper.from_array(bias, "fc.b"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["input", "conv.w"], ["features"], name="conv"),
             helper.make_node("ReduceMean", ["features", "axes"], ["pooled"], name="gap", keepdims=0)]
    if head == "matmul":
        nodes += [helper.make_node("MatMul", ["pooled", "fc.w"], ["product"], name="fc_matmul"),
                  helper.make_node("Add", ["product", "fc.b"], ["logits"], name="fc_add")]
        weight = matrix.T
    else:
        nodes += [helper.make_node("Gemm", ["pooled", "fc.w", "fc.b"], ["logits"], name="fc", transB=0, alpha=2.0)]
        weight = 2.0 * matrix.T  # beta = 1: the bias is as stored
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return conv[:, :, 0, 0], weight, bias


@pytest.mark.parametrize("head", ["matmul", "gemm"])
def test_cam_reads_matmul_add_and_transposed_gemm_heads(head, tmp_path):
    conv, weight, bias = _handmade_onnx(tmp_path / f"{head}.onnx", head)
    model = cnnviz_core.load_model(str(tmp_path / f"{head}.onnx"))
    inputs = np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype(np.float32)
    result = cnnviz_core.run("cam", model, inputs, target=[0, 2])
    features = np.einsum("kc,bchw->bkhw", conv, inputs)
    for i, cls in enumerate([0, 2]):
        expected = np.einsum("k,khw->hw", weight[cls], features[i])
        np.testing.assert_allclose(result.extras["layer_map"][i], expected, atol=1e-5)
        assert result.scores[i] == pytest.approx(expected.mean() + bias[cls], abs=1e-5)
