"""deepdream on the pretrained EfficientNet-Lite0 (at 96 px, to stay fast) and
real photos: the objective grows for a whole layer, a channel and a unit;
the step is the normalized gradient; batching and seeds behave; the default
layer is the mid-level one; the model is left as it was; bad input is refused."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.cli import main
from cnnviz_core.errors import InputError, LayerNotFoundError
from cnnviz_core.images import denormalize
from cnnviz_core.targets import parse_targets
from cnnviz_plugins.synthesis.support.objectives import forward, objective_values
from cnnviz_plugins.synthesis.deepdream import octave_sizes
from conftest import hook_total, state_copy, states_equal

SIZE = 96
TARGETS = [None, "blocks.4:5", "blocks.4:5@2,2"]  # the whole default layer, a channel, one unit


@pytest.fixture(scope="module")
def lite0_96(lite0):
    """The session's pretrained model, read at 96 x 96 (the weights work at any size)."""
    return TorchAdapter(lite0.module, "efficientnet_lite0", dataclasses.replace(lite0.config, input_size=(SIZE, SIZE)), lite0.labels)


@pytest.fixture(scope="module")
def pixels(lite0_96, photos) -> np.ndarray:
    """chelsea, coffee and astronaut as (3, 3, 96, 96) pixels in [0, 1]."""
    batch, _ = lite0_96.prepare([photos["chelsea"], photos["coffee"], photos["astronaut"]])
    return denormalize(batch, lite0_96.config)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread computes batched and single-item convolutions bit for bit
    alike (several split the work by batch size, and DeepDream's normalized
    steps amplify last-bit differences); it also keeps this file's time steady
    on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_objective_grows_for_a_layer_a_channel_and_a_unit(lite0_96, photos):
    paths = [photos["chelsea"], photos["coffee"], photos["astronaut"]]
    result = cnnviz_core.run("deepdream", lite0_96, paths, target=TARGETS, steps=4, octaves=2, device="cpu")

    assert result.images.shape == (3, 3, SIZE, SIZE) and 0.0 <= result.images.min() and result.images.max() <= 1.0
    assert result.history["objective"].shape == (3, 8)  # steps per octave x octaves
    assert result.names == ["chelsea", "coffee", "astronaut"]
    for record in result.records:
        # on the unrolled full-size image: the photo vs the dream
        assert record["end"] > record["start"] + 0.2 * abs(record["start"]) + 1.0, record
        assert record["layer"] == "blocks.4"
    assert np.abs(result.images - result.inputs).mean() > 0.01  # the photo visibly changed
    assert result.classes.shape == (3,) and ((0 < result.scores) & (result.scores <= 1)).all()


def test_step_is_lr_times_gradient_over_its_mean_magnitude(lite0_96, pixels):
    mid = (0.25 + 0.5 * pixels[:2]).astype(np.float32)  # away from 0 and 1: no pixel is clamped
    result = cnnviz_core.run("deepdream", lite0_96, mid, steps=1, octaves=1, jitter=0, lr=0.002, device="cpu")
    change = np.abs(result.images - mid).reshape(2, -1).mean(1)
    np.testing.assert_allclose(change, 0.002, rtol=1e-3)
    # ... along the gradient of the mean square of the layer's output
    x = torch.from_numpy(mid[:1]).requires_grad_(True)
    targets = parse_targets(None, 1, 1000, lite0_96.labels)
    with torch.enable_grad():
        _, outputs = forward(lite0_96, (x - 0.5) / 0.5, {"blocks.4"}, need_logits=False)
        (gradient,) = torch.autograd.grad(objective_values(targets, None, outputs, "blocks.4").sum(), x)
    step = result.images[0] - mid[0]
    gradient = gradient[0].numpy()
    assert np.corrcoef(step.ravel(), gradient.ravel())[0, 1] > 0.999


def test_batching_and_seeds(lite0_96, pixels):
    def dream(batch_size, seed=0, **params):
        return cnnviz_core.run("deepdream", lite0_96, pixels, target=TARGETS, batch_size=batch_size, seed=seed, device="cpu", **params)

    together, apart, other = dream(3, steps=3, octaves=1), dream(1, steps=3, octaves=1), dream(3, seed=1, steps=3, octaves=1)
    np.testing.assert_array_equal(together.images, apart.images)  # per-item rolls: the same dream
    assert np.abs(together.images - other.images).mean() > 1e-4  # other rolls, another dream
    # At the smaller octave's size (69 px) even one thread rounds batched
    # convolutions differently in the last bit; before the dynamics amplify
    # that, the images agree to rounding.
    together, apart = dream(3, steps=1, octaves=2), dream(1, steps=1, octaves=2)
    np.testing.assert_allclose(together.images, apart.images, atol=1e-5)


def test_default_layer_is_the_stage_before_the_last(lite0_96):
    assert lite0_96.mid_level_layer() == "blocks.4"  # 14x14 at 224 px
    assert cnnviz_core.load_model("timm:resnet18").mid_level_layer() == "layer3"
    assert octave_sizes((96, 96), 3, 1.4) == [(49, 49), (69, 69), (96, 96)]


def test_early_stopped_forward_reads_the_same_layer(lite0_96, pixels):
    x = torch.from_numpy(pixels[:2] * 2 - 1)  # mean = std = 0.5
    with torch.no_grad():
        full_logits, full = forward(lite0_96, x, {"blocks.2", "blocks.4"}, need_logits=True)
        no_logits, early = forward(lite0_96, x, {"blocks.2", "blocks.4"}, need_logits=False)
    assert no_logits is None and full_logits.shape == (2, 1000)
    for name in ("blocks.2", "blocks.4"):
        torch.testing.assert_close(early[name], full[name])
    assert hook_total(lite0_96.module) == 0


def test_model_weights_mode_and_hooks_are_left_as_they_were(lite0_96, pixels):
    module = lite0_96.module
    before, flags = state_copy(module), [p.requires_grad for p in module.parameters()]
    module.train()
    try:
        cnnviz_core.run("deepdream", lite0_96, pixels[:1], target=["blocks.4:5"], steps=1, octaves=2, device="cpu")
        assert module.training and all(m.training for m in module.modules())
    finally:
        module.eval()
    assert states_equal(before, state_copy(module))
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())
    assert hook_total(module) == 0


def test_bad_input_gets_typed_errors(lite0_96, pixels):
    with pytest.raises(LayerNotFoundError, match="no layer 'blocks.44'"):
        cnnviz_core.run("deepdream", lite0_96, pixels[:1], layer="blocks.44")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        cnnviz_core.run("deepdream", lite0_96, pixels[:1] * 3 - 1)
    with pytest.raises(InputError, match="96x96"):
        cnnviz_core.run("deepdream", lite0_96, np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="starts from an input image"):
        cnnviz_core.run("deepdream", lite0_96)
    with pytest.raises(InputError, match="fewer --octaves"):
        cnnviz_core.run("deepdream", lite0_96, pixels[:1], octaves=12)
    assert hook_total(lite0_96.module) == 0


def test_cli_dreams_on_a_photo(tmp_path, photos):
    out = tmp_path / "out"
    assert main(["run", "deepdream", "--model", "efficientnet_lite0", "--image", photos["coffee"], "--steps", "1",
                 "--octaves", "2", "--layer", "blocks.3", "--out", str(out), "--quiet"]) == 0
    files = set(os.listdir(out))
    assert {"coffee.deepdream.png", "deepdream.json", "deepdream.history.objective.npy"} <= files
    record = json.loads((out / "deepdream.json").read_text())
    assert record["items"][0]["layer"] == "blocks.3" and record["params"]["octaves"] == 2
