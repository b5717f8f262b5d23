"""Vision transformers read as feature maps: token (B, N, C) and channels-last
(B, h, w, C) layers become (B, C, h, w) maps with the prefix tokens dropped,
CAM gradients flow through that reshape, and the default CAM layer of a ViT,
DeiT or Swin is a late block, never the patch-embedding stem.

Hand checks on a tiny token net whose answer is known; timm's ViT, DeiT and
Swin at random initialization and 64 x 64 inputs for the real layouts."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

import cnnviz_core
from cnnviz_core import InputError, MethodError, MethodWarning
from cnnviz_core.feature_layout import FeatureLayout
from cnnviz_core.toolkit import hook_count
from tiny_models import TinyCamNet

SIZE = 64


class TokenNet(nn.Module):
    """Patch embedding (4 x 4 patches, 5 channels) → ``prefix`` learned tokens
    before the patch tokens → ``mixer`` (identity: its output is the patch
    embedding itself) → head on the first token plus the mean patch token.
    ``declare`` says the prefix in timm's ``num_prefix_tokens``; otherwise it
    is counted from ``cls_token`` / ``dist_token``."""

    def __init__(self, prefix: int, declare: bool = True):
        super().__init__()
        torch.manual_seed(prefix)
        self.patch_embed = nn.Conv2d(3, 5, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 5)) if prefix >= 1 else None
        self.dist_token = nn.Parameter(torch.randn(1, 1, 5)) if prefix >= 2 else None
        if declare:
            self.num_prefix_tokens = prefix
        self.prefix = prefix
        self.mixer = nn.Identity()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        extra = [t.expand(len(x), -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        tokens = self.mixer(torch.cat([*extra, patches], dim=1))
        return self.head(tokens[:, 0] + tokens[:, self.prefix:].mean(dim=1))


def tiny_timm(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=SIZE, **options).eval()


@pytest.fixture(scope="module")
def vit():
    return cnnviz_core.load_model(tiny_timm("vit_tiny_patch16_224", depth=2), input_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def deit():
    return cnnviz_core.load_model(tiny_timm("deit_tiny_distilled_patch16_224", depth=2), input_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def swin():
    module = tiny_timm("swin_tiny_patch4_window7_224", window_size=2, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    return cnnviz_core.load_model(module, input_size=(SIZE, SIZE))


def batch(n: int = 2, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("prefix, declare", [(1, True), (2, True), (2, False), (0, True)])
def test_token_layer_drops_the_prefix_tokens(prefix, declare):
    net = TokenNet(prefix, declare)
    adapter = cnnviz_core.load_model(net, input_size=(16, 16))
    layout = adapter.feature_layout("mixer")
    assert layout == FeatureLayout("tokens", (4, 4), prefix)
    x = batch(2, 16)
    expected = net.patch_embed(torch.from_numpy(x)).detach().numpy()  # the patch tokens are the embedding's map
    mixed = adapter.activations(x, ["mixer"])["mixer"]
    assert mixed.shape == (2, 5, 4, 4)
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-6)
    assert adapter.layer_shapes(["mixer", "head"]) == {"mixer": (1, 5, 4, 4), "head": (1, 3)}
    assert adapter.default_layer() == "mixer"  # not the patch-embedding conv, the only 4-D layer


def test_gradcam_gradient_flows_through_the_token_reshape():
    """score = w_c · (t_0 + mean of the patch tokens) + b: ∂score/∂A_k = w_ck / 16 at every patch,
    so Grad-CAM's map is ReLU(Σ_k w_ck / 16 · A_k) on the embedding's 4 x 4 map."""
    net = TokenNet(2)
    adapter = cnnviz_core.load_model(net, input_size=(16, 16))
    x = batch(2, 16)
    result = cnnviz_core.run("gradcam", adapter, x, target=1)
    embedding = net.patch_embed(torch.from_numpy(x)).detach().double()
    weights = net.head.weight.detach().double()[1] / 16
    expected = torch.relu((weights[None, :, None, None] * embedding).sum(dim=1))
    np.testing.assert_allclose(result.extras["layer_map"], expected.numpy(), rtol=1e-4, atol=1e-6)
    assert hook_count(net) == 0


def test_layer_features_read_token_layers_as_maps_with_gradients():
    from cnnviz_core.toolkit import LayerFeatures

    net = TokenNet(1)
    adapter = cnnviz_core.load_model(net, input_size=(16, 16))
    features = LayerFeatures(adapter, ["mixer"], "test")
    x = torch.from_numpy(batch(2, 16)).requires_grad_(True)
    _, reference = features.reference(x)
    read = features(x)["mixer"]
    expected = net.patch_embed(x)
    assert read.shape == reference["mixer"].shape == (2, 5, 4, 4)
    torch.testing.assert_close(read, expected)
    (gradient,) = torch.autograd.grad(read.square().sum(), x)
    (expected_gradient,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(gradient, expected_gradient)


def test_layout_round_trip_and_refusal():
    layout = FeatureLayout("tokens", (2, 3), 2)
    tokens = torch.arange(2 * 8 * 4, dtype=torch.float32).reshape(2, 8, 4)
    feature_map = layout.to_map(tokens)
    assert feature_map.shape == (2, 4, 2, 3)
    assert torch.equal(feature_map[1, :, 1, 2], tokens[1, 2 + 5])  # row 1, column 2 is patch 5 after 2 prefix tokens
    assert torch.equal(layout.from_map(feature_map, tokens), tokens)
    np.testing.assert_array_equal(layout.to_map(tokens.numpy()), feature_map.numpy())  # arrays as well as tensors
    channels_last = FeatureLayout("channels_last", (2, 3))
    nhwc = torch.randn(1, 2, 3, 4)
    assert torch.equal(channels_last.to_map(nhwc), nhwc.permute(0, 3, 1, 2))
    assert torch.equal(channels_last.from_map(channels_last.to_map(nhwc), nhwc), nhwc)
    with pytest.raises(InputError, match="neither the 2 x 3 grid"):
        layout.to_map(torch.zeros(1, 2 + 7, 4))


def test_cnn_layers_have_no_layout():
    adapter = cnnviz_core.load_model(TinyCamNet(), input_size=(16, 16))
    assert all(adapter.feature_layout(name) is None for name in adapter.layers())


@pytest.mark.parametrize("fixture, prefix", [("vit", 1), ("deit", 2)])
def test_vit_gradcam_uses_a_late_block(fixture, prefix, request):
    adapter = request.getfixturevalue(fixture)
    blocks = len(adapter.module.blocks)
    layer = adapter.default_layer()
    assert layer == f"blocks.{blocks - 1}.norm1"  # the input of the last attention, not patch_embed.proj
    assert adapter.feature_layout(layer) == FeatureLayout("tokens", (4, 4), prefix)
    result = cnnviz_core.run("gradcam", adapter, batch())
    assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all()
    assert result.extras["layer_map"].shape == (2, 4, 4) and result.maps.max() > 0
    assert hook_count(adapter.module) == 0
    assert all(block.attn.fused_attn is not None for block in adapter.module.blocks)


def test_swin_channels_last_layers(swin):
    module = swin.module
    layer = swin.default_layer()
    assert layer == "norm"  # the last stage's normalized output, (B, 2, 2, C) channels-last
    assert swin.feature_layout(layer) == FeatureLayout("channels_last", (2, 2))
    assert swin.feature_layout("layers.1") == FeatureLayout("channels_last", (8, 8))
    x = batch()
    raw = {}
    handle = module.layers[2].register_forward_hook(lambda _m, _i, out: raw.setdefault("out", out.detach()))
    try:
        with torch.no_grad():
            module(torch.from_numpy(x))
    finally:
        handle.remove()
    read = swin.activations(x, ["layers.2"])["layers.2"]
    np.testing.assert_allclose(read, raw["out"].permute(0, 3, 1, 2).numpy(), rtol=1e-5, atol=1e-5)
    result = cnnviz_core.run("gradcam", swin, x)
    assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all()
    assert result.extras["layer_map"].shape == (2, 2, 2)
    cam = cnnviz_core.run("cam", swin, x)  # GAP + linear over the channels-last norm: CAM's condition holds
    np.testing.assert_allclose(cam.extras["layer_map"].mean(axis=(1, 2)) + swin.cam_head().bias[cam.classes],
                               cam.scores, rtol=1e-4, atol=1e-4)


def test_cam_refuses_a_class_token_head(vit):
    with pytest.raises(MethodError, match="global average pool"):
        cnnviz_core.run("cam", vit, batch(1))


def test_guided_backprop_on_gelu_warns(vit):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cnnviz_core.run("guided_backprop", vit, batch(1))
    assert np.isfinite(result.maps).all()
    assert any(issubclass(w.category, MethodWarning) and "GELU" in str(w.message) for w in caught)


def test_onnx_copy_reads_the_same_token_layers(vit, tmp_path):
    from cnnviz_adapters.onnx_export import export_onnx

    torch_vit = vit
    onnx_vit = cnnviz_core.load_model(export_onnx(torch_vit, tmp_path / "vit.onnx"))
    layer = onnx_vit.default_layer()
    assert layer == "/blocks/blocks.1/norm1/LayerNormalization"  # the torch model's blocks.1.norm1, not a 4-D stem or attention internal
    assert onnx_vit.feature_layout(layer) == torch_vit.feature_layout("blocks.1.norm1") == FeatureLayout("tokens", (4, 4), 1)
    assert onnx_vit.layer_shapes([layer]) == {layer: (1, 192, 4, 4)}
    x = batch()
    on_onnx = cnnviz_core.run("score_cam", onnx_vit, x, channels=4)
    on_torch = cnnviz_core.run("score_cam", torch_vit, x, channels=4)
    np.testing.assert_allclose(on_onnx.maps, on_torch.maps, rtol=1e-3, atol=1e-4 * float(np.abs(on_torch.maps).max()))
    field = onnx_vit.receptive_field(layer)  # after attention: every patch (probed through the map)
    np.testing.assert_array_equal(field.boxes(np.array([0, 3]), np.array([1, 2])), [[0, SIZE, 0, SIZE]] * 2)


def test_fixed_size_transformer_refuses_resizing_octaves(vit):
    assert vit.fixed_input_size() == (SIZE, SIZE)
    assert cnnviz_core.load_model(TinyCamNet(), input_size=(16, 16)).fixed_input_size() is None
    dynamic = cnnviz_core.load_model(tiny_timm("vit_tiny_patch16_224", depth=1, dynamic_img_size=True), input_size=(SIZE, SIZE))
    assert dynamic.fixed_input_size() is None
    images = np.random.default_rng(0).random((1, 3, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(InputError, match="--octaves 1"):
        cnnviz_core.run("deepdream", vit, images, steps=1)
    assert hook_count(vit.module) == 0


def test_token_receptive_fields_are_patches_then_the_whole_image(vit):
    """Before attention a token sees its 16 x 16 patch; after it, every patch."""
    rows, cols = np.array([0, 3]), np.array([1, 2])
    before = vit.receptive_field("pos_drop")  # tokens with the class token, before the first block
    np.testing.assert_array_equal(before.boxes(rows, cols), [[0, 16, 16, 32], [48, 64, 32, 48]])
    after = vit.receptive_field(vit.default_layer())
    np.testing.assert_array_equal(after.boxes(rows, cols), [[0, SIZE, 0, SIZE]] * 2)
    assert hook_count(vit.module) == 0


def test_hybrid_with_a_conv_stem_uses_its_last_token_stage():
    levit = tiny_timm("levit_128s", embed_dim=(16, 32, 48), num_heads=(1, 2, 3), depth=(1, 1, 1), key_dim=8)
    adapter = cnnviz_core.load_model(levit, input_size=(SIZE, SIZE))
    assert adapter.default_layer() == "stages.1"  # (1, 4, 32) tokens on a 2 x 2 grid, not the 4-D conv stem
    assert adapter.feature_layout("stages.0") == FeatureLayout("tokens", (4, 4))
    result = cnnviz_core.run("gradcam", adapter, batch(1))
    assert result.extras["layer_map"].shape == (1, 2, 2) and np.isfinite(result.maps).all()
    cnn = nn.Sequential(collections.OrderedDict(stem=nn.Conv2d(3, 4, 4, stride=4), act=nn.ReLU(),
                                                pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    cnn_adapter = cnnviz_core.load_model(cnn, input_size=(16, 16))
    assert all(cnn_adapter.feature_layout(name) is None for name in cnn_adapter.layers())  # a CNN's stem finds no tokens
    assert cnn_adapter.default_layer() == "act"


def test_torchvision_vit_uses_the_input_of_its_last_attention():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    nn.init.normal_(net.heads.head.weight)  # torchvision starts the head at zero: every gradient would be zero
    adapter = cnnviz_core.load_model(net.eval(), input_size=(SIZE, SIZE))
    layer = adapter.default_layer()  # its class token is read out after the final norm: ln_1 of the last block
    assert layer == "encoder.layers.encoder_layer_1.ln_1"
    assert adapter.feature_layout(layer) == FeatureLayout("tokens", (4, 4), 1)
    result = cnnviz_core.run("gradcam", adapter, batch())
    assert np.isfinite(result.maps).all() and result.extras["layer_map"].max() > 0
