"""The plugin's own tests: input x gradient against a hand computation on a
tiny linear conv model, whose gradient is known in closed form.

Run with the package installed (``pip install -e .`` or ``pip install .``):
cnnviz then finds the method through the entry point, as users get it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_core import InputError

H = W = 6


class TinyLinearCNN(nn.Module):
    """3x3 conv (3 -> 4 channels, zero padding), then the spatial mean: every
    logit is linear in the input."""

    num_classes = 4

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            if bias:
                self.conv.bias.copy_(torch.randn(4, generator=generator))

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def logit_gradient(weight: np.ndarray, c: int) -> np.ndarray:
    """d logit_c / dx by hand: output pixel (y, x) reads input (y+i-1, x+j-1)
    with weight W[c, :, i, j]; each input pixel sums the weights of the output
    pixels that read it, over H*W for the mean."""
    grad = np.zeros((3, H, W))
    for i in range(3):
        for j in range(3):
            rows = slice(max(0, i - 1), min(H, H + i - 1))
            cols = slice(max(0, j - 1), min(W, W + j - 1))
            grad[:, rows, cols] += weight[c, :, i, j][:, None, None]
    return grad / (H * W)


def hand_logits(model: TinyLinearCNN, x: np.ndarray) -> np.ndarray:
    weight = model.conv.weight.detach().double().numpy()
    bias = model.conv.bias.detach().double().numpy() if model.conv.bias is not None else np.zeros(4)
    grads = np.stack([logit_gradient(weight, c) for c in range(4)])  # (classes, 3, H, W)
    return np.einsum("ckhw,bkhw->bc", grads, x) + bias


@pytest.fixture
def model():
    return TinyLinearCNN()


@pytest.fixture
def inputs():
    return np.random.default_rng(1).normal(size=(3, 3, H, W)).astype(np.float32)


def test_registered_through_the_entry_point():
    registry = cnnviz_core.get_registry()
    assert "input_x_gradient" in cnnviz_core.methods()
    method_class = registry.methods["input_x_gradient"]
    assert method_class.kind == "attribution"
    assert method_class.requires == frozenset({cnnviz_core.Capability.GRADIENTS})
    info = {p.name: p for p in registry.plugins()}[method_class.plugin]
    assert info.distribution == "cnnviz-input-x-gradient"


def test_logit_maps_match_hand_computation(model, inputs):
    weight = model.conv.weight.detach().double().numpy()
    targets = [2, "top1", 0]  # one per input; "top1" resolves from the logits
    result = cnnviz_core.run("input_x_gradient", model, inputs, target=targets, device="cpu")
    top1 = int(np.argmax(hand_logits(model, inputs.astype(np.float64))[1]))
    classes = [2, top1, 0]
    expected_images = np.stack([inputs[b] * logit_gradient(weight, c) for b, c in enumerate(classes)])
    assert result.classes.tolist() == classes
    assert result.maps.shape == (3, H, W) and result.maps.dtype == np.float32
    assert result.images.shape == (3, 3, H, W)
    np.testing.assert_allclose(result.images, expected_images, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.maps, expected_images.sum(axis=1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.scores, hand_logits(model, inputs.astype(np.float64))[[0, 1, 2], classes], rtol=1e-5)


def test_absolute_sums_magnitudes_and_keeps_the_signed_image(model, inputs):
    weight = model.conv.weight.detach().double().numpy()
    result = cnnviz_core.run("input_x_gradient", model, inputs, target=1, device="cpu", absolute=True)
    expected = inputs * logit_gradient(weight, 1)
    np.testing.assert_allclose(result.maps, np.abs(expected).sum(axis=1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.images, expected, rtol=1e-4, atol=1e-7)
    assert result.params["absolute"] is True
    assert (result.images < 0).any()


def test_probability_score_matches_hand_computation(model, inputs):
    weight = model.conv.weight.detach().double().numpy()
    grads = np.stack([logit_gradient(weight, c) for c in range(4)])
    logits = hand_logits(model, inputs.astype(np.float64))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    result = cnnviz_core.run("input_x_gradient", model, inputs, target=3, device="cpu", score="prob")
    # d p_3 / dx = p_3 (g_3 - sum_j p_j g_j)
    dprob = probs[:, 3, None, None, None] * (grads[3][None] - np.einsum("bc,ckhw->bkhw", probs, grads))
    np.testing.assert_allclose(result.maps, (inputs * dprob).sum(axis=1), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(result.scores, probs[:, 3], rtol=1e-5)


def test_completeness_on_a_bias_free_linear_model(inputs):
    """For f linear without bias, sum of x * df/dx over all pixels is f(x)."""
    model = TinyLinearCNN(bias=False)
    result = cnnviz_core.run("input_x_gradient", model, inputs, target=2, device="cpu")
    np.testing.assert_allclose(result.maps.sum(axis=(1, 2)), result.scores, rtol=1e-4)


def test_model_left_as_it_was(model, inputs):
    model.train()
    model.conv.bias.requires_grad_(False)
    cnnviz_core.run("input_x_gradient", model, inputs, device="cpu")
    assert model.training and model.conv.training
    assert all(p.grad is None for p in model.parameters())
    assert model.conv.weight.requires_grad and not model.conv.bias.requires_grad


def test_neuron_target_is_refused_with_a_typed_error(model, inputs):
    with pytest.raises(InputError, match="input_x_gradient needs a class index or label name or top1; got the neuron target conv:0"):
        cnnviz_core.run("input_x_gradient", model, inputs, target="conv:0", device="cpu")
