"""Saliency, neuron gradient, guided backprop and deconvnet against gradients
written out by hand on a two-layer network, and on the pretrained model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from conftest import CAT_BOX, hook_total

from tiny_models import FunctionalReluNet, TwoLayerNet

IDENTITY = PreprocessConfig(input_size=(2, 2), mean=(0, 0, 0), std=(1, 1, 1))


def pixels() -> np.ndarray:
    """(r, g) per pixel: A=(1,1) both units on; B=(1,-1) only z0; C=(-1,1) only z1; D=(-1,-1) none.
    Forward: logit0 = Σ (z0⁺ − z1⁺) = 0 + 1 − 1 + 0 = 0; logit1 = Σ (−2 z0⁺ + 3 z1⁺) = 1 − 2 + 3 + 0 = 2."""
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    x[0, 0] = [[1, 1], [-1, -1]]
    x[0, 1] = [[1, -1], [1, -1]]
    x[0, 2] = 5.0  # blue is not read by the network
    return x


def image_from(per_pixel) -> np.ndarray:
    """Build (1, 3, 2, 2) from {pixel: (dr, dg, db)} with pixels A B / C D."""
    out = np.zeros((1, 3, 2, 2), dtype=np.float32)
    where = {"A": (0, 0), "B": (0, 1), "C": (1, 0), "D": (1, 1)}
    for pixel, value in per_pixel.items():
        out[0, :, where[pixel][0], where[pixel][1]] = value
    return out


def run(method, model=None, **kwargs):
    adapter = TorchAdapter(model or TwoLayerNet(), "two_layer", IDENTITY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fully guidable model must not warn
        return cnnviz_core.run(method, adapter, pixels(), **kwargs)


# class 0 has W2 row (1, −1); class 1 has (−2, 3)
EXPECTED = {
    ("saliency", 0): {"A": (1, -1, 0), "B": (1, 0, 0), "C": (0, -1, 0)},
    ("saliency", 1): {"A": (-2, 3, 0), "B": (-2, 0, 0), "C": (0, 3, 0)},
    # guided: positive upstream gradient AND positive forward input
    ("guided_backprop", 0): {"A": (1, 0, 0), "B": (1, 0, 0)},
    ("guided_backprop", 1): {"A": (0, 3, 0), "C": (0, 3, 0)},
    # deconvnet: positive upstream gradient, whatever the forward input
    ("deconvnet", 0): {"A": (1, 0, 0), "B": (1, 0, 0), "C": (1, 0, 0), "D": (1, 0, 0)},
    ("deconvnet", 1): {"A": (0, 3, 0), "B": (0, 3, 0), "C": (0, 3, 0), "D": (0, 3, 0)},
}


@pytest.mark.parametrize("method, target", sorted(EXPECTED))
def test_gradient_images_match_hand_computation(method, target):
    result = run(method, target=target)
    expected = image_from(EXPECTED[(method, target)])
    np.testing.assert_allclose(result.images, expected, atol=1e-6)
    np.testing.assert_allclose(result.maps, np.abs(expected).max(axis=1), atol=1e-6)
    assert result.scores[0] == pytest.approx([0.0, 2.0][target])
    assert result.classes[0] == target


def test_top1_is_class_one():
    assert run("saliency").classes[0] == 1


@pytest.mark.parametrize(
    "target, expected, score",
    [
        # layer:channel is the channel's mean over the 2x2 map: each position weighs 1/4
        ("conv1:1", {p: (0, 0.25, 0) for p in "ABCD"}, 0.0),  # before the ReLU every pixel's g counts: (1 - 1 + 1 - 1) / 4
        ("act:1", {"A": (0, 0.25, 0), "C": (0, 0.25, 0)}, 0.5),  # after the ReLU only A and C are active: (1 + 1) / 4
        ("act:1@0,0", {"A": (0, 1, 0)}, 1.0),  # one position: only pixel A, with weight 1
        ("act:0@0,1", {"B": (1, 0, 0)}, 1.0),
    ],
)
def test_neuron_gradient_matches_hand_computation(target, expected, score):
    result = run("neuron_gradient", target=target)
    np.testing.assert_allclose(result.images, image_from(expected), atol=1e-6)
    assert result.scores[0] == pytest.approx(score)
    assert result.classes[0] == -1 and result.label(0) == target


def test_channel_target_is_the_mean_whatever_the_map_size():
    """The same image at twice the size (each pixel repeated 2x2) gives the
    same layer:channel value, since it is a mean over positions, not a sum."""
    small = run("neuron_gradient", target="act:1")
    big_pixels = pixels().repeat(2, axis=2).repeat(2, axis=3)
    adapter = TorchAdapter(TwoLayerNet(), "two_layer", PreprocessConfig(input_size=(4, 4), mean=(0, 0, 0), std=(1, 1, 1)))
    big = cnnviz_core.run("neuron_gradient", adapter, big_pixels, target="act:1")
    assert big.scores[0] == pytest.approx(small.scores[0]) == pytest.approx(0.5)
    # the gradient spreads over 4x as many pixels, each with a quarter of the weight
    np.testing.assert_allclose(big.images.sum(), small.images.sum(), atol=1e-6)


@pytest.mark.parametrize(
    "target, message",
    [("top1", "needs a neuron target"), ("act:2", "channel 2 is out of range"), ("act:0@5,0", "outside"),
     ("nolayer:0", "no layer")],
)
def test_neuron_gradient_refuses_bad_targets(target, message):
    with pytest.raises(cnnviz_core.InputError, match=message):
        run("neuron_gradient", target=target)


def test_guided_rule_on_leaky_relu_and_relu6():
    leaky = run("guided_backprop", TwoLayerNet(nn.LeakyReLU(0.1)), target=1)
    # pixel B: z1 = −1 < 0 → derivative 0.1, upstream 3 → 0.3; z0 upstream −2 is cut
    np.testing.assert_allclose(leaky.images, image_from({"A": (0, 3, 0), "B": (0, 0.3, 0), "C": (0, 3, 0), "D": (0, 0.3, 0)}), atol=1e-6)
    x = pixels()
    x[0, 1, 0, 0] = 7.0  # z1 = 7 at A: ReLU6 is flat there
    adapter = TorchAdapter(TwoLayerNet(nn.ReLU6(inplace=True)), "relu6", IDENTITY)
    result = cnnviz_core.run("guided_backprop", adapter, x, target=1)
    np.testing.assert_allclose(result.images, image_from({"C": (0, 3, 0)}), atol=1e-6)


def test_inplace_relu_is_guided_and_restored():
    model = TwoLayerNet(nn.ReLU(inplace=True))
    result = run("guided_backprop", model, target=1)
    np.testing.assert_allclose(result.images, image_from(EXPECTED[("guided_backprop", 1)]), atol=1e-6)
    assert "forward" not in model.act.__dict__ and hook_total(model) == 0


def test_unguidable_nonlinearities_warn_what_was_not_modified():
    adapter = TorchAdapter(TwoLayerNet(nn.SiLU()), "silu", IDENTITY)
    with pytest.warns(cnnviz_core.MethodWarning, match=r"not modified: 1 SiLU module.*act.*plain gradient"):
        cnnviz_core.run("guided_backprop", adapter, pixels())
    adapter = TorchAdapter(FunctionalReluNet(), "functional", IDENTITY)
    with pytest.warns(cnnviz_core.MethodWarning, match=r"1 functional relu\(\) call"):
        result = cnnviz_core.run("deconvnet", adapter, pixels(), target=1)
    # the functional ReLU passes the plain gradient: same as saliency's image
    np.testing.assert_allclose(result.images, image_from(EXPECTED[("saliency", 1)]), atol=1e-6)


def test_rules_are_undone_after_an_error(monkeypatch):
    model = TwoLayerNet(nn.ReLU6())
    adapter = TorchAdapter(model, "two_layer", IDENTITY)
    from cnnviz_core.toolkit import input_gradient as gradient_base

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(gradient_base, "explained_scores", broken)  # fails between the forward and the backward
    with pytest.raises(RuntimeError, match="injected"):
        cnnviz_core.run("guided_backprop", adapter, pixels())
    assert "forward" not in model.act.__dict__
    assert torch.equal(model(torch.from_numpy(pixels())), TwoLayerNet(nn.ReLU6())(torch.from_numpy(pixels())))
    assert all(p.requires_grad for p in model.parameters()) and hook_total(model) == 0


def test_pretrained_guided_backprop_differs_from_plain_gradient_and_peaks_on_cat(lite0, photos):
    from conftest import in_box

    images = [photos["chelsea"], photos["cat_on_grey"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every nonlinearity of lite0 is a ReLU6: no warning
        guided = cnnviz_core.run("guided_backprop", lite0, images, target="Egyptian cat")
    plain = cnnviz_core.run("saliency", lite0, images, target="Egyptian cat")
    correlation = np.corrcoef(guided.images[0].ravel(), plain.images[0].ravel())[0, 1]
    assert correlation < 0.9 and not np.allclose(guided.images, plain.images)
    assert in_box(guided.maps[1])

    def contrast(map_2d):  # mean map value on the cat over the mean on the grey background
        inside = np.zeros(map_2d.shape, bool)
        inside[CAT_BOX] = True
        return map_2d[inside].mean() / map_2d[~inside].mean()

    # both concentrate on the cat; guided backprop far more sharply (≈27× vs ≈3× measured)
    assert contrast(plain.maps[1]) > 2 and contrast(guided.maps[1]) > 4 * contrast(plain.maps[1])


def test_neuron_target_before_an_inplace_relu_explains_the_pre_activation():
    """conv1's channel g is read before the in-place ReLU: its gradient is 1/4
    (the mean over the 2x2 map) on every pixel's green channel, even where the
    ReLU later zeroes it."""
    result = run("neuron_gradient", TwoLayerNet(nn.ReLU(inplace=True)), target="conv1:1")
    np.testing.assert_allclose(result.images, image_from({p: (0, 0.25, 0) for p in "ABCD"}), atol=1e-6)
    assert result.scores[0] == pytest.approx(0.0)  # (1 − 1 + 1 − 1) / 4, not the ReLU'd 2 / 4
