"""attention_rollout (Abnar & Zuidema 2020) against a rollout computed by hand
from a two-block attention net's own q and k weights; timm's fused attention
switched off for the run and restored, on success and on error; models
without global attention refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import Attention
from torch import nn

import cnnviz_core
from cnnviz_core import MethodError
from cnnviz_core.toolkit import attention_modules, hook_count
from tiny_models import TinyCamNet

DIM, HEADS, GRID = 8, 2, 4


class TwoBlockViT(nn.Module):
    """16 x 16 input → 4 x 4 patches of DIM channels, a class token, two
    pre-norm attention blocks (timm's Attention, fused), head on the class token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, DIM, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
        self.num_prefix_tokens = 1
        self.norms = nn.ModuleList([nn.LayerNorm(DIM) for _ in range(2)])
        self.attns = nn.ModuleList([Attention(DIM, num_heads=HEADS, qkv_bias=True) for _ in range(2)])
        for attn in self.attns:
            attn.fused_attn = True
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), self.patch_embed(x).flatten(2).transpose(1, 2)], dim=1)
        for norm, attn in zip(self.norms, self.attns):
            tokens = tokens + attn(norm(tokens))
        return self.head(tokens[:, 0])


def hand_attention(net: TwoBlockViT, x: np.ndarray) -> list[np.ndarray]:
    """Each block's softmax(q kᵀ / √d) per head, (B, heads, N, N), computed from its qkv weights."""
    found = []
    with torch.no_grad():
        tokens = torch.cat([net.cls_token.expand(len(x), -1, -1),
                            net.patch_embed(torch.from_numpy(x)).flatten(2).transpose(1, 2)], dim=1).double()
        for norm, attn in zip(net.norms, net.attns):
            normed = torch.nn.functional.layer_norm(tokens, (DIM,), norm.weight.double(), norm.bias.double(), norm.eps)
            qkv = normed @ attn.qkv.weight.double().T + attn.qkv.bias.double()
            b, n, _ = qkv.shape
            q, k, v = qkv.reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            probabilities = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(DIM // HEADS), dim=-1)
            found.append(probabilities.numpy())
            mixed = (probabilities @ v).transpose(1, 2).reshape(b, n, DIM)
            tokens = tokens + mixed @ attn.proj.weight.double().T + attn.proj.bias.double()
    return found


def hand_rollout(layers: list[np.ndarray], fusion: str, discard: float = 0.0) -> np.ndarray:
    rollout = None
    for attention in layers:
        fused = {"mean": attention.mean(1), "max": attention.max(1), "min": attention.min(1)}[fusion]
        if discard:
            for item in fused:
                flat = item.reshape(-1)
                keep = flat[0]
                flat[np.argsort(flat, kind="stable")[: int(flat.size * discard)]] = 0
                flat[0] = keep
        step = 0.5 * (fused + np.eye(fused.shape[-1]))
        step /= step.sum(-1, keepdims=True)
        rollout = step if rollout is None else step @ rollout
    return rollout[:, 0, 1:].reshape(len(rollout), GRID, GRID)


@pytest.fixture(scope="module")
def net_and_inputs():
    net = TwoBlockViT().eval()
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    return net, x


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5)])
def test_rollout_equals_the_hand_computation(net_and_inputs, fusion, discard):
    net, x = net_and_inputs
    adapter = cnnviz_core.load_model(net, input_size=(16, 16))
    result = cnnviz_core.run("attention_rollout", adapter, x, head_fusion=fusion, discard_ratio=discard)
    expected = hand_rollout(hand_attention(net, x), fusion, discard)
    np.testing.assert_allclose(result.extras["layer_map"], expected, rtol=1e-4, atol=1e-6)
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(expected)[:, None], size=(16, 16), mode="bilinear",
                                                align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(result.maps, upsampled, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.scores, logits[np.arange(2), result.classes], rtol=1e-5, atol=1e-5)


def test_fused_attention_restored_on_success_and_error(net_and_inputs):
    net, x = net_and_inputs
    adapter = cnnviz_core.load_model(net, input_size=(16, 16))
    cnnviz_core.run("attention_rollout", adapter, x)
    assert [attn.fused_attn for attn in net.attns] == [True, True] and hook_count(net) == 0

    def broken(_features):
        assert [attn.fused_attn for attn in net.attns] == [False, False]  # switched off while it runs
        raise RuntimeError("head failed")

    original = net.head.forward
    net.head.forward = broken
    try:
        with pytest.raises(RuntimeError, match="head failed"):
            cnnviz_core.run("attention_rollout", adapter, x)
    finally:
        net.head.forward = original
    assert [attn.fused_attn for attn in net.attns] == [True, True] and hook_count(net) == 0


def test_timm_vit_and_deit():
    for name, prefix in (("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        torch.manual_seed(0)
        module = timm.create_model(name, pretrained=False, img_size=64, depth=2).eval()
        assert list(attention_modules(module)) == ["blocks.0.attn", "blocks.1.attn"]
        adapter = cnnviz_core.load_model(module, input_size=(64, 64))
        result = cnnviz_core.run("attention_rollout", adapter, np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32))
        assert result.maps.shape == (2, 64, 64) and np.isfinite(result.maps).all()
        grid = result.extras["layer_map"]
        # the class token's row of a row-stochastic rollout, less its prefix columns: positive, summing below 1
        assert grid.shape == (2, 4, 4) and (grid > 0).all() and (grid.sum(axis=(1, 2)) < 1).all(), name
        assert all(block.attn.fused_attn for block in module.blocks) and hook_count(module) == 0


def test_models_without_global_attention_are_refused():
    cnn = cnnviz_core.load_model(TinyCamNet(), input_size=(16, 16))
    with pytest.raises(MethodError, match="no attention blocks"):
        cnnviz_core.run("attention_rollout", cnn, np.zeros((1, 3, 16, 16), np.float32))
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2, embed_dim=24,
                             depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).eval()
    with pytest.raises(MethodError, match="windowed attention"):
        cnnviz_core.run("attention_rollout", cnnviz_core.load_model(swin, input_size=(64, 64)), np.zeros((1, 3, 64, 64), np.float32))
    assert hook_count(swin) == 0
