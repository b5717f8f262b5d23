"""SmoothGrad over other gradient methods: seeding, σ = 0, wrapping Grad-CAM,
refusing methods without gradients, chunking, and on the pretrained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import Capability
from cnnviz_core.cli import main
from cnnviz_plugins.attribution.smoothgrad import SmoothGrad
from conftest import CAT_BOX, SMALL_CONFIG, hook_total, small_torch_adapter
from test_gradient_methods import IDENTITY, pixels
from tiny_models import SmallConvNet, TwoLayerNet


@pytest.fixture
def inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)


def smooth(inputs, target=None, adapter=None, **params):
    return cnnviz_core.run("smoothgrad", adapter or small_torch_adapter(), inputs, target=target, **params)


def test_same_seed_same_maps_other_seed_other_maps(inputs):
    first = smooth(inputs, samples=4, seed=7)
    again = smooth(inputs, samples=4, seed=7)
    other = smooth(inputs, samples=4, seed=8)
    np.testing.assert_array_equal(first.maps, again.maps)
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.allclose(first.maps, other.maps)
    assert first.maps.shape == (2, 32, 32) and first.images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("inner", ["saliency", "guided_backprop"])
def test_zero_noise_gives_the_inner_method_result(inputs, inner):
    plain = cnnviz_core.run(inner, small_torch_adapter(), inputs, target=[1, "top1"])
    smoothed = smooth(inputs, target=[1, "top1"], of=inner, noise=0.0, samples=3)
    np.testing.assert_array_equal(smoothed.maps, plain.maps)
    np.testing.assert_array_equal(smoothed.images, plain.images)
    np.testing.assert_array_equal(smoothed.classes, plain.classes)
    np.testing.assert_allclose(smoothed.scores, plain.scores, rtol=1e-6)


def test_result_is_the_mean_over_noisy_copies_of_one_class():
    """Every copy explains the clean image's top-1 class, even where the noise changes the top-1."""
    adapter = TorchAdapter(TwoLayerNet(), "two_layer", IDENTITY)
    x = pixels()
    result = cnnviz_core.run("smoothgrad", adapter, x, samples=6, noise=0.2, seed=3)
    top1 = int(np.argmax(adapter.logits(x)[0]))
    method = SmoothGrad(adapter, SmoothGrad.make_params(samples=6, noise=0.2, seed=3))
    sigma = 0.2 * float(x.max() - x.min())
    copies = np.stack([x[0] + sigma * method.noise(k, x[0].shape) for k in range(6)])
    assert len(set(np.argmax(adapter.logits(copies), axis=1))) > 1  # the noise does move the top-1
    plain = cnnviz_core.run("saliency", adapter, copies, target=top1)
    np.testing.assert_allclose(result.maps[0], plain.maps.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.images[0], plain.images.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert result.classes[0] == top1 == 1
    assert result.scores[0] == pytest.approx(2.0)  # the clean image's logit


def test_over_gradcam_averages_its_maps(inputs):
    # Grad-CAM needs gradients but is no input-gradient method: no image-space result
    zero = smooth(inputs, target=[1, "top1"], of="gradcam", noise=0.0, samples=2)
    plain = cnnviz_core.run("gradcam", small_torch_adapter(), inputs, target=[1, "top1"])
    np.testing.assert_allclose(zero.maps, plain.maps, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(zero.extras["layer_map"], plain.extras["layer_map"], rtol=1e-6, atol=1e-7)
    assert zero.images is None

    noisy = smooth(inputs[:1], target=1, of="gradcam", samples=4, noise=0.3, seed=1)
    method = SmoothGrad(small_torch_adapter(), SmoothGrad.make_params(samples=4, noise=0.3, seed=1))
    sigma = 0.3 * float(inputs[0].max() - inputs[0].min())
    copies = np.stack([inputs[0] + sigma * method.noise(k, inputs[0].shape) for k in range(4)])
    per_copy = cnnviz_core.run("gradcam", small_torch_adapter(), copies, target=1)
    np.testing.assert_allclose(noisy.maps[0], per_copy.maps.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert noisy.maps.min() >= 0 and not np.allclose(noisy.maps, zero.maps[:1])


@pytest.mark.parametrize(
    "of, why",
    [("occlusion", "it needs no gradients"), ("smoothgrad", "cannot wrap itself"), ("no_such_method", "not a registered method")],
)
def test_non_gradient_methods_are_refused(inputs, of, why):
    with pytest.raises(cnnviz_core.InputError, match=why) as caught:
        smooth(inputs, of=of)
    message = str(caught.value)
    assert "saliency" in message and "guided_backprop" in message and "gradcam" in message
    assert "occlusion," not in message and "(occlusion" not in message


class GradientsOnly(TorchAdapter):
    capabilities = frozenset({Capability.FORWARD, Capability.GRADIENTS})


def test_inner_method_needing_more_than_the_model_has_is_refused(inputs):
    adapter = GradientsOnly(SmallConvNet(), "gradients_only", SMALL_CONFIG)
    smooth(inputs, adapter=adapter, samples=2)  # saliency needs only gradients
    with pytest.raises(cnnviz_core.CapabilityError, match="'gradcam' needs activations"):
        smooth(inputs, adapter=adapter, of="gradcam", samples=2)
    assert hook_total(adapter.module) == 0


def test_neuron_targets_pass_through_to_a_neuron_method(inputs):
    result = smooth(inputs, target="features.4:3", of="neuron_gradient", samples=3)
    assert list(result.classes) == [-1, -1] and result.label(0) == "features.4:3"
    with pytest.raises(cnnviz_core.TargetError, match="needs a neuron target"):
        smooth(inputs, of="neuron_gradient", samples=3)


def test_chunking_and_out_of_memory_do_not_change_the_result(inputs, monkeypatch):
    whole = smooth(inputs, samples=6, batch_size=16)
    pieces = smooth(inputs, samples=6, batch_size=4)
    np.testing.assert_allclose(pieces.maps, whole.maps, rtol=1e-5, atol=1e-7)

    class InjectedOOM(Exception):
        pass

    from cnnviz_plugins.attribution.saliency import Saliency

    original = Saliency.attribute

    def limited(self, batch, targets):
        if len(batch) > 2:
            raise InjectedOOM()
        return original(self, batch, targets)

    monkeypatch.setattr(Saliency, "attribute", limited)
    scheduler = cnnviz_core.Scheduler(device="cpu", oom_check=lambda e: isinstance(e, InjectedOOM), progress=False)
    backed_off = cnnviz_core.run("smoothgrad", small_torch_adapter(), inputs, samples=6, scheduler=scheduler)
    assert scheduler.backoffs
    np.testing.assert_allclose(backed_off.maps, whole.maps, rtol=1e-5, atol=1e-7)


def contrast(map_2d) -> float:
    """Mean map value on the cat over the mean on the grey background (as in test_gradient_methods)."""
    inside = np.zeros(map_2d.shape, bool)
    inside[CAT_BOX] = True
    return float(map_2d[inside].mean() / map_2d[~inside].mean())


@pytest.mark.slow
def test_pretrained_smoothgrad_concentrates_on_the_cat_more_than_saliency(lite0, photos):
    plain = cnnviz_core.run("saliency", lite0, photos["cat_on_grey"], target="Egyptian cat")
    smoothed = cnnviz_core.run("smoothgrad", lite0, photos["cat_on_grey"], target="Egyptian cat", samples=16)
    # measured: plain ≈ 3.4, SmoothGrad (16 samples, σ 15 %) ≈ 4.3–4.4 over seeds 0 and 1
    assert contrast(smoothed.maps[0]) > 1.15 * contrast(plain.maps[0])
    assert smoothed.classes[0] == plain.classes[0] and smoothed.scores[0] == pytest.approx(plain.scores[0], rel=1e-4)


@pytest.mark.slow
def test_cli_smoothgrad_of_guided_backprop(capsys, photos, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "smoothgrad", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                 "--of", "guided_backprop", "--samples", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "smoothgrad.json").read_text())
    assert record["params"]["of"] == "guided_backprop" and record["params"]["samples"] == 4
    assert record["explained"][0]["label"] == "Egyptian cat"
    assert np.load(out / "smoothgrad.images.npy").shape == (1, 3, 224, 224)
    code = main(["run", "smoothgrad", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                 "--of", "occlusion", "--out", str(tmp_path / "never"), "--quiet"])
    assert code == 2 and "needs no gradients" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_help_lists_the_parameters(capsys):
    assert main(["run", "smoothgrad", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--of", "--samples", "--noise", "--seed", "--batch-size"))
