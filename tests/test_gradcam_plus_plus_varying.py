"""Grad-CAM++ where ∂score/∂A varies over positions, against the paper's α
worked out by hand.

On a GAP + linear head the gradient is the same at every position, so α is
one number per channel and Grad-CAM++'s position weighting never shows. Here
the heads are a spatially weighted sum (the gradient is V_ck · M_c[i, j],
changing sign across the map) and a 1x1 conv followed by a global max (the
gradient lives at one position, 0/0 elsewhere). The expected maps are
computed in numpy from the weights, not with autograd:

    α_kij = g_kij² / (2 g_kij² + Σ_ab A_kab · g_kij³)   (Chattopadhay et al. eq. 19,
            the exp-score closed form; 0 where the denominator is 0)
    w_k   = Σ_ij α_kij · ReLU(g_kij)
    map   = ReLU(Σ_k w_k A_k)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig

IDENTITY = PreprocessConfig(input_size=(3, 3), mean=(0, 0, 0), std=(1, 1, 1))
CONV = np.array([[1.0, -0.5, 0.25], [0.3, 0.8, -0.6]])  # 1x1 conv 3 → 2 channels, no bias
MIX = np.array([[1.5, -1.0], [-0.5, 2.0], [0.7, 0.4]])  # V[c, k]: how class c reads channel k
POSITION = np.array([  # M[c, i, j]: where class c looks (signs vary, so ReLU(g) and g³ matter)
    [[1.0, -0.5, 0.2], [0.4, 2.0, -1.0], [0.0, 0.6, 1.2]],
    [[-0.3, 0.9, 1.1], [0.5, -1.5, 0.8], [1.0, 0.2, -0.7]],
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
])
BIAS = np.array([0.1, -0.2, 0.3])


class Features(nn.Module):
    """The shared feature layer A = ReLU(conv1x1(x)), named "features"."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor(CONV, dtype=torch.float32).view(2, 3, 1, 1))


class WeightedSumHead(Features):
    """score_c = Σ_k V_ck Σ_ij M_c[i, j] A_k[i, j] + b_c: ∂score_c/∂A_kij = V_ck M_c[i, j]."""

    def forward(self, x):
        a = self.features(x)
        v = torch.tensor(MIX, dtype=torch.float32)
        m = torch.tensor(POSITION, dtype=torch.float32)
        return torch.einsum("ck,cij,bkij->bc", v, m, a) + torch.tensor(BIAS, dtype=torch.float32)


class ConvMaxHead(Features):
    """score_c = max_ij Σ_k V_ck A_k[i, j] + b_c: the gradient is V_ck at the arg-max, 0 elsewhere."""

    def forward(self, x):
        a = self.features(x)
        per_class = torch.einsum("ck,bkij->bcij", torch.tensor(MIX, dtype=torch.float32), a)
        return per_class.flatten(2).amax(dim=2) + torch.tensor(BIAS, dtype=torch.float32)


def image() -> np.ndarray:
    return np.random.default_rng(5).uniform(-1.0, 2.0, size=(1, 3, 3, 3)).astype(np.float32)


def activations(x: np.ndarray) -> np.ndarray:
    """A (2, 3, 3) by hand."""
    return np.maximum(np.einsum("kc,cij->kij", CONV, x[0].astype(np.float64)), 0.0)


def weighted_sum_gradient(a: np.ndarray, cls: int) -> np.ndarray:
    return MIX[cls][:, None, None] * POSITION[cls][None]


def conv_max_gradient(a: np.ndarray, cls: int) -> np.ndarray:
    per_position = np.einsum("k,kij->ij", MIX[cls], a)
    i, j = np.unravel_index(np.argmax(per_position), per_position.shape)
    gradient = np.zeros_like(a)
    gradient[:, i, j] = MIX[cls]
    return gradient


def plus_plus_map(a: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's α (per channel and position) and the layer map, in float64."""
    sums = a.sum(axis=(1, 2), keepdims=True)
    denominator = 2 * g**2 + sums * g**3
    alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    return alpha, np.maximum(np.einsum("k,kij->ij", weights, a), 0.0)


def gradcam_plus_plus(model: nn.Module, target: int):
    adapter = TorchAdapter(model, "varying", IDENTITY)
    return cnnviz_core.run("gradcam_plus_plus", adapter, image(), target=target, layer="features")


HEADS = [(WeightedSumHead, weighted_sum_gradient), (ConvMaxHead, conv_max_gradient)]


@pytest.mark.parametrize("head, gradient_of", HEADS, ids=["weighted_sum", "conv_max"])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_layer_map_matches_the_papers_alpha_by_hand(head, gradient_of, target):
    a = activations(image())
    g = gradient_of(a, target)
    alpha, expected = plus_plus_map(a, g)
    result = gradcam_plus_plus(head(), target)
    np.testing.assert_allclose(result.extras["layer_map"][0], expected, rtol=1e-5, atol=1e-6)
    # the score explained is the head's output, checked by hand too
    assert result.classes[0] == target
    np.testing.assert_allclose(result.scores[0], float(head()(torch.from_numpy(image())).detach()[0, target]), rtol=1e-6)


@pytest.mark.parametrize("target", [0, 1])
def test_weighted_sum_head_is_not_the_constant_gradient_case(target):
    """The case really exercises position-dependent α: the per-position α vary,
    and the map differs from the one Grad-CAM++ would give with each channel's
    gradient replaced by its spatial mean (what a GAP head produces)."""
    a = activations(image())
    g = weighted_sum_gradient(a, target)
    alpha, expected = plus_plus_map(a, g)
    assert np.ptp(alpha.reshape(2, -1), axis=1).min() > 0.01
    constant = np.broadcast_to(g.mean(axis=(1, 2), keepdims=True), g.shape)
    _, degenerate = plus_plus_map(a, constant)
    assert np.abs(expected - degenerate).max() > 0.05 * np.abs(expected).max()
    result = gradcam_plus_plus(WeightedSumHead(), target)
    assert np.abs(result.extras["layer_map"][0] - degenerate).max() > 0.05 * np.abs(expected).max()


def test_class_two_reads_every_position_equally_and_reduces_to_the_constant_case():
    """Class 2 has M = 0.5 everywhere: a constant gradient per channel, where
    α = g² / (2g² + S g³) is one number per channel (the GAP closed form)."""
    a = activations(image())
    g = weighted_sum_gradient(a, 2)
    alpha, expected = plus_plus_map(a, g)
    assert np.ptp(alpha.reshape(2, -1), axis=1).max() < 1e-12
    c = MIX[2] * 0.5
    s = a.sum(axis=(1, 2))
    closed = 9 * c**2 / (2 * c**2 + s * c**3) * np.maximum(c, 0)  # 9 positions, all equal
    np.testing.assert_allclose(np.maximum(np.einsum("k,kij->ij", closed, a), 0), expected, rtol=1e-12)
    np.testing.assert_allclose(gradcam_plus_plus(WeightedSumHead(), 2).extras["layer_map"][0], expected, rtol=1e-5, atol=1e-6)
