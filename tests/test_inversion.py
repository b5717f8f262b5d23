"""inversion on the pretrained EfficientNet-Lite0 read at 96 px: from noise the
reconstruction's features approach the photo's, with both optimizers; seeds
and batching behave; the model is left as it was; bad requests get typed
errors before any work. Also the priors and the default-layer choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
import torchvision

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.cli import main
from cnnviz_core.errors import InputError, LayerNotFoundError, TargetError
from cnnviz_plugins.synthesis.support.image_priors import PIXEL_NORM, PIXEL_VARIATION, alpha_norm, total_variation
from conftest import SMALL_CONFIG, hook_total, small_torch_adapter, state_copy, states_equal
from tiny_models import SmallConvNet

SIZE = 96
LAYER = "blocks.2"  # stride 8: a 12 x 12 map at 96 px, quick to match from noise


@pytest.fixture(scope="module")
def lite0_96(lite0):
    """The session's pretrained model, read at 96 x 96 (the weights work at any size)."""
    return TorchAdapter(lite0.module, "efficientnet_lite0", dataclasses.replace(lite0.config, input_size=(SIZE, SIZE)), lite0.labels)


@pytest.fixture(scope="module")
def chelsea_96(lite0_96, photos):
    pixels, _ = lite0_96.prepare([photos["chelsea"], photos["coffee"]])
    return cnnviz_core.images.denormalize(pixels, lite0_96.config)


def test_adam_reconstruction_approaches_the_photo_features(lite0_96, chelsea_96):
    result = cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], layer=LAYER, steps=25, device="cpu")

    assert result.images.shape == (1, 3, SIZE, SIZE) and 0.0 <= result.images.min() and result.images.max() <= 1.0
    curves = result.history
    assert set(curves) == {"objective", "feature_distance", "alpha_norm", "total_variation"}
    assert curves["objective"].shape == (1, 25)
    record = result.records[0]
    # noise starts about as far from the photo's features as their own size; 25 steps close most of it
    assert record["feature_distance_start"] > 0.8
    assert record["feature_distance"] < 0.5 * record["feature_distance_start"]
    assert curves["objective"][0, -1] < 0.5 * curves["objective"][0, 0]
    assert curves["objective"][0, -5:].mean() < curves["objective"][0, :5].mean()
    assert record["layer"] == LAYER
    assert result.extras["feature_distance"][0] == pytest.approx(record["feature_distance"])
    # the final value is the returned image's own: recompute it independently
    with torch.no_grad():
        outputs = {}
        handle = lite0_96.get_layer(LAYER).register_forward_hook(lambda m, i, o: outputs.setdefault("f", o))
        try:
            lite0_96.module(torch.from_numpy((np.stack([result.images[0], chelsea_96[0]]) - 0.5) / 0.5))
        finally:
            handle.remove()
    made, wanted = outputs["f"][0], outputs["f"][1]
    assert float((made - wanted).norm() / wanted.norm()) == pytest.approx(record["feature_distance"], rel=1e-3)
    np.testing.assert_array_equal(result.pictures["input"], chelsea_96[:1])
    assert result.classes.shape == (1,) and 0.0 < result.scores[0] <= 1.0
    assert result.higher_is_better is False


def test_momentum_sgd_also_descends(lite0_96, chelsea_96):
    result = cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], layer=LAYER, steps=15, optimizer="sgd", device="cpu")
    record = result.records[0]
    assert record["feature_distance"] < 0.8 * record["feature_distance_start"]
    assert result.history["objective"][0, -1] < result.history["objective"][0, 0]


def test_seeds_and_batching(lite0, photos):
    small = TorchAdapter(lite0.module, "efficientnet_lite0", dataclasses.replace(lite0.config, input_size=(64, 64)), lite0.labels)
    photos_64 = cnnviz_core.images.denormalize(small.prepare([photos["chelsea"], photos["coffee"]])[0], small.config)
    params = dict(layer=LAYER, steps=2, device="cpu")
    together = cnnviz_core.run("inversion", small, photos_64, batch_size=2, seed=3, **params)
    apart = cnnviz_core.run("inversion", small, photos_64, batch_size=1, seed=3, **params)
    other = cnnviz_core.run("inversion", small, photos_64, batch_size=2, seed=4, **params)
    again = cnnviz_core.run("inversion", small, photos_64, batch_size=2, seed=3, **params)
    np.testing.assert_array_equal(together.images, again.images)
    # batch 1 and batch 2 run different convolution kernels: float rounding apart, the same images
    difference = np.abs(together.images - apart.images)
    assert difference.max() < 1e-3 and difference.mean() < 1e-6
    np.testing.assert_allclose(together.history["objective"], apart.history["objective"], rtol=1e-4)
    assert np.abs(together.images - other.images).max() > 0.05  # another seed, another start


def test_model_left_as_it_was(lite0_96, chelsea_96):
    module = lite0_96.module
    before = state_copy(module)
    flags = [p.requires_grad for p in module.parameters()]
    module.train()
    try:
        cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], layer=LAYER, steps=2, device="cpu")
        assert module.training and all(m.training for m in module.modules())
    finally:
        module.eval()
    assert hook_total(module) == 0
    assert states_equal(before, state_copy(module))
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())


class FailsOnCall(torch.nn.Module):
    """SmallConvNet whose forward raises on its n-th call: an error in mid-optimization."""

    def __init__(self, call: int):
        super().__init__()
        self.net, self.call, self.calls = SmallConvNet(), call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.call:
            raise RuntimeError("injected failure")
        return self.net(x)


def test_an_error_mid_run_leaves_the_model_as_it_was():
    adapter = TorchAdapter(FailsOnCall(call=4), "fails", SMALL_CONFIG)
    module = adapter.module
    module.train()
    before = state_copy(module)
    pixels = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(RuntimeError, match="injected failure"):  # reference, start, step 1: the 4th call is step 2's
        cnnviz_core.run("inversion", adapter, pixels, layer="net.features.2", steps=5, device="cpu")
    assert module.calls == 4
    assert hook_total(module) == 0 and states_equal(before, state_copy(module))
    assert module.training and all(m.training for m in module.modules())
    assert all(p.requires_grad for p in module.parameters())


def test_bad_requests_fail_before_any_work(lite0_96, chelsea_96):
    with pytest.raises(LayerNotFoundError, match="blocks.99"):
        cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], layer="blocks.99", device="cpu")
    with pytest.raises(TargetError, match="neuron"):
        cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], target="blocks.2:3", device="cpu")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        cnnviz_core.run("inversion", lite0_96, chelsea_96[:1] * 2.0, device="cpu")
    with pytest.raises(InputError, match="starts from an input image"):
        cnnviz_core.run("inversion", lite0_96, None, device="cpu")
    with pytest.raises(InputError, match="optimizer"):
        cnnviz_core.run("inversion", lite0_96, chelsea_96[:1], optimizer="rmsprop", device="cpu")
    assert hook_total(lite0_96.module) == 0


def test_cli_writes_the_pair(photos, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "inversion", "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--layer", "blocks.1",
                 "--steps", "1", "--out", str(out), "--quiet"])
    assert code == 0
    record = json.loads((out / "inversion.json").read_text())
    item = record["items"][0]
    assert item["layer"] == "blocks.1" and 0.0 < item["feature_distance"]
    assert (out / "chelsea.inversion.png").exists() and (out / "chelsea.inversion.input.png").exists()
    assert record["params"]["steps"] == 1


def test_default_layer_is_the_last_but_one_stage(lite0):
    assert lite0.stage_outputs() == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert lite0.mid_level_layer() == "blocks.4"
    with torch.device("meta"):  # names only: no weights are made
        resnet = TorchAdapter(timm.create_model("resnet18"))
        vgg = TorchAdapter(timm.create_model("vgg16"))
    assert resnet.stage_outputs() == ["act1", "layer1", "layer2", "layer3", "layer4"] and resnet.mid_level_layer() == "layer3"
    # vgg16 lists its last max-pool as a stage too; a pooling layer only subsamples, so it is left out
    assert vgg.stage_outputs() == ["features.3", "features.8", "features.15", "features.22", "features.29"]


def test_stages_found_by_resolution_without_feature_info():
    plain = torchvision.models.resnet18(num_classes=10)
    config = cnnviz_core.PreprocessConfig(input_size=(64, 64))
    assert TorchAdapter(plain, "tv_resnet18", config).stage_outputs() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    small = small_torch_adapter()
    # conv 32x32 → pool → conv 16x16: the 32 px stage ends at its ReLU, the 16 px one is the whole features block
    assert small.stage_outputs() == ["features.2", "features"]
    assert hook_total(small.module) == 0 and hook_total(plain) == 0


def test_priors_against_hand_computed_values():
    x = torch.full((2, 3, 4, 5), 0.5)
    x[1, 0, 1, 2] = 0.5 + PIXEL_NORM  # one pixel one B away from the mean colour
    # α-norm: mean over the 20 positions of (‖x − m‖ / B)^α
    np.testing.assert_allclose(alpha_norm(x, 6.0, (0.5, 0.5, 0.5)).numpy(), [0.0, 1.0 / 20], atol=1e-6)
    # TV on the 3 x 4 grid of forward differences: the bump at (1, 2) differs from its upper and left
    # neighbours' forward differences and its own: (0,2) down, (1,1) right, (1,2) down + right
    d = PIXEL_NORM / PIXEL_VARIATION  # 6.5
    expected_beta2 = (d**2 + d**2 + 2 * d**2) / 12
    expected_beta1 = (d + d + np.sqrt(2) * d) / 12
    np.testing.assert_allclose(total_variation(x, 2.0).numpy(), [0.0, expected_beta2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total_variation(x, 1.0).numpy(), [0.0, expected_beta1], rtol=1e-4, atol=1e-3)
