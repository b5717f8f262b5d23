"""The plugin's own tests: HiResCAM against a hand computation on tiny nets
with known weights, and against Grad-CAM where the two must agree.

Run with the package installed (``pip install -e .`` or ``pip install .``):
cnnviz then finds the method through the entry point, as users get it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core

H, W = 4, 6
# 1x1 conv picking channel mixes of (r, g, b): A_k(p) = Σ_c M[k, c] x_c(p)
MIX = np.array([[1.0, -0.5, 0.0], [0.25, 1.0, -1.0]])
# class weights per channel
V = np.array([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.75]])


class SquaredHeadNet(nn.Module):
    """features: 1x1 conv (3 -> 2, stride 1) -> logit_c = Σ_k V[c, k] · mean_p A_k(p)².
    By hand: ∂logit_c/∂A_k(p) = 2 V[c, k] A_k(p) / (H·W), different at every
    position, so HiResCAM and Grad-CAM differ."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor(MIX, dtype=torch.float32).view(2, 3, 1, 1))
        self.v = torch.tensor(V, dtype=torch.float32)

    def forward(self, x):
        return self.features(x).pow(2).mean(dim=(2, 3)) @ self.v.T


class GapLinearNet(nn.Module):
    """features: 1x1 conv (3 -> 2) -> ReLU -> global average pool -> linear (2 -> 3):
    ∂logit_c/∂A_k = V[c, k] / (h·w) at every position."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, kernel_size=1, stride=stride, bias=False), nn.ReLU())
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor(MIX, dtype=torch.float32).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor(V, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(3, 3, H, W)).astype(np.float32)


def activations(x: np.ndarray) -> np.ndarray:
    return np.einsum("kc,bchw->bkhw", MIX, x.astype(np.float64))


def test_registered_through_the_entry_point():
    registry = cnnviz_core.get_registry()
    method_class = registry.methods["hirescam"]
    assert method_class.kind == "attribution"
    assert method_class.requires == frozenset({cnnviz_core.Capability.GRADIENTS, cnnviz_core.Capability.ACTIVATIONS})
    info = {p.name: p for p in registry.plugins()}[method_class.plugin]
    assert info.distribution == "cnnviz-hirescam"


def test_matches_hand_computation_where_the_gradient_varies(inputs):
    model = SquaredHeadNet()
    targets = [0, 2, "top1"]
    result = cnnviz_core.run("hirescam", model, inputs, target=targets, layer="features", device="cpu")
    a = activations(inputs)  # (b, 2, H, W)
    logits = np.einsum("ck,bk->bc", V, (a**2).mean(axis=(2, 3)))
    classes = [0, 2, int(np.argmax(logits[2]))]
    gradients = np.stack([2 * V[c][:, None, None] * a[b] / (H * W) for b, c in enumerate(classes)])
    expected = np.maximum((gradients * a).sum(axis=1), 0)  # ReLU(Σ_k g_k ⊙ A_k)
    assert result.classes.tolist() == classes
    np.testing.assert_allclose(result.scores, logits[np.arange(3), classes], rtol=1e-5)
    np.testing.assert_allclose(result.extras["layer_map"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)  # stride 1: upsampling is the identity
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU both keeps and cuts
    gradcam = cnnviz_core.run("gradcam", model, inputs, target=targets, layer="features", device="cpu")
    assert not np.allclose(gradcam.maps, result.maps, atol=1e-4)  # a varying gradient tells them apart


def test_equals_gradcam_and_cam_over_hw_on_a_gap_linear_net(inputs):
    """With ∂y/∂A_k = w_k/(h·w) everywhere, Σ_k g_k ⊙ A_k = Σ_k α_k A_k:
    HiResCAM is Grad-CAM, and CAM (Σ_k w_k A_k) divided by h·w."""
    model = GapLinearNet(stride=2)  # a 2x3 layer map, upsampled to 4x6
    result = cnnviz_core.run("hirescam", model, inputs, target=[1, 0, 2], layer="features", device="cpu")
    gradcam = cnnviz_core.run("gradcam", model, inputs, target=[1, 0, 2], layer="features", device="cpu")
    np.testing.assert_allclose(result.maps, gradcam.maps, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.extras["layer_map"], gradcam.extras["layer_map"], rtol=1e-5, atol=1e-7)
    a = np.maximum(activations(inputs)[:, :, ::2, ::2], 0)  # (b, 2, 2, 3) after the stride-2 conv and ReLU
    cam = np.einsum("bk,bkhw->bhw", V[[1, 0, 2]], a)
    np.testing.assert_allclose(result.extras["layer_map"], np.maximum(cam, 0) / a[0, 0].size, rtol=1e-5, atol=1e-7)
    assert result.maps.shape == (3, H, W)


def test_model_left_as_it_was_and_neurons_refused(inputs):
    model = GapLinearNet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cnnviz_core.run("hirescam", model, inputs, device="cpu")
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(cnnviz_core.TargetError, match="neuron"):
        cnnviz_core.run("hirescam", model, inputs, target="features.0:0", device="cpu")
