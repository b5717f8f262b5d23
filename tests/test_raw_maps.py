"""Attribution maps are raw (DESIGN §2): generated over every registered
attribution method, the map of a model whose features and logits are three
times larger scales exactly as the method's definition says. Any rescaling of
the maps (min–max, division by the maximum, a softmax…) breaks the expected
factor.

The scaled model multiplies the weights and bias of the last convolution (and
the classifier's bias) by 3: the ReLU after it is positively homogeneous, so
the feature layer A (the default layer) and every logit are exactly 3× the
plain model's, while nothing before that convolution changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.registry import Registry

LIVE = Registry()
CONFIG = PreprocessConfig(input_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
FACTOR = 3.0

# What each method's map becomes when A and the logits are multiplied by 3.
SCALE = {
    "cam": FACTOR,  # Σ_k w_ck A_k: same weights, A × 3
    "deconvnet": FACTOR,  # a modified backward is linear in the output gradient
    "eigencam": FACTOR,  # the projection M v_1 of A × 3 on the same direction v_1
    "gradcam": FACTOR,  # ∂y/∂A unchanged, A × 3; ReLU commutes with a positive factor
    "guided_backprop": FACTOR,
    "guided_gradcam": FACTOR**2,  # guided backprop (× 3) times Grad-CAM (× 3)
    "integrated_gradients": FACTOR,  # (x − x') ⊙ ∫∇(3f); the same path points (the stop rule is relative)
    "layercam": FACTOR,  # ReLU(∂y/∂A) unchanged, A × 3
    "neuron_gradient": FACTOR,  # the unit of A is 3× larger, so is its gradient
    "occlusion": FACTOR,  # score drops
    "rise": FACTOR,  # Σ score(x ⊙ M) M / (N p)
    "saliency": FACTOR,  # |∂y/∂x|
    "smoothgrad": FACTOR,  # the mean of saliency maps
}
# Methods whose map is not homogeneous in the score, with the reason; checked
# below to really not scale, so a stale reason does not hide a rescaling.
NOT_HOMOGENEOUS = {
    "gradcam_plus_plus": "α = g² / (2g² + Σ_ab A_ab · g³) (the exp-score closed form) mixes powers of the "
                         "gradient and of the activations, so α changes when A or the score is scaled",
    "score_cam": "the channel weights are a softmax over channels of the score gains; scaling the scores "
                 "sharpens the softmax instead of scaling it (the min-max-scaled masks do not change)",
}
QUICK = {"integrated_gradients": {"steps": 16, "tolerance": 0.0}, "rise": {"masks": 64}, "occlusion": {"window": 4, "stride": 4},
         "smoothgrad": {"samples": 4}}


class ScalableNet(nn.Module):
    """conv → ReLU → max pool → conv (× factor) → ReLU → GAP → linear (bias × factor)."""

    def __init__(self, factor: float = 1.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            self.features[3].weight.mul_(factor)
            self.features[3].bias.mul_(factor)
            self.fc.bias.mul_(factor)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def attribution_methods() -> list[str]:
    # a detection method needs a detector, not this classifier (tests/test_detection.py)
    # attention_rollout needs attention blocks (its map, a product of softmaxes, does not scale with the score anyway)
    return [name for name, cls in LIVE.methods.items()
            if cls.kind == "attribution" and cls.explains != "detection" and name != "attention_rollout"]


def run_on(factor: float, name: str):
    adapter = TorchAdapter(ScalableNet(factor), "scalable", CONFIG)
    inputs = np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32)
    method_class = LIVE.methods[name]
    target = ["features:1", "features:2@3,4"] if method_class.explains == "neuron" else [1, "top1"]
    return cnnviz_core.run(name, adapter, inputs, target=target, **QUICK.get(name, {}))


def test_the_scaled_model_is_three_times_the_plain_one():
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32))
    plain, scaled = ScalableNet(), ScalableNet(FACTOR)
    with torch.no_grad():
        for a, b in ((scaled.features(x), plain.features(x)), (scaled(x), plain(x))):
            torch.testing.assert_close(a, FACTOR * b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_every_attribution_method_has_an_expected_scale_or_a_reason():
    missing = set(attribution_methods()) - set(SCALE) - set(NOT_HOMOGENEOUS)
    assert not missing, f"give {sorted(missing)} an expected factor in SCALE or a reason in NOT_HOMOGENEOUS"


@pytest.mark.parametrize("name", [n for n in attribution_methods() if n in SCALE])
def test_map_scales_as_the_definition_says(name):
    plain, scaled = run_on(1.0, name), run_on(FACTOR, name)
    expected = SCALE[name]
    assert np.abs(plain.maps).max() > 1e-3, "a zero map would scale by anything"
    np.testing.assert_allclose(scaled.maps, expected * plain.maps, rtol=1e-4, atol=1e-5 * np.abs(scaled.maps).max())
    if plain.images is not None:
        np.testing.assert_allclose(scaled.images, expected * plain.images, rtol=1e-4, atol=1e-5 * np.abs(scaled.images).max())
    assert list(scaled.classes) == list(plain.classes)


@pytest.mark.parametrize("name", [n for n in attribution_methods() if n in NOT_HOMOGENEOUS])
def test_methods_excluded_for_not_being_homogeneous_really_are_not(name):
    plain, scaled = run_on(1.0, name), run_on(FACTOR, name)
    assert np.abs(plain.maps).max() > 1e-3
    ratio_error = np.abs(scaled.maps - FACTOR * plain.maps).max() / np.abs(scaled.maps).max()
    assert ratio_error > 1e-3, f"{name} scales by {FACTOR}: move it to SCALE ({NOT_HOMOGENEOUS[name]} no longer holds)"
