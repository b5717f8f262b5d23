"""Score-CAM against a naive channel-by-channel reference, across the torch and
ONNX adapters, on the pretrained model, and its refusals."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.adapter import select_scores
from conftest import CAT_BOX, hook_total, in_box, small_torch_adapter

from test_gradcam import IDENTITY, tiny_input
from tiny_models import TinyCamNet

SMALL_LAYERS = {"torch": "features.5", "onnx": "/features/features.5/Clip"}
# blocks.4 of efficientnet_lite0: 112 channels at 14 x 14 (bn2, the default
# layer, has 1280: too many forwards for a test); the ONNX node giving the same
# tensor is the residual Add that ends the stage.
LITE0_MID = {"torch": "blocks.4", "onnx": "/blocks/blocks.4/blocks.4.2/Add"}


def naive_score_cam(adapter, image, cls, layer, baseline=0.0, score="logit", only=None):
    """Score-CAM of one image written out plainly: one forward per channel."""
    activations = adapter.activations(image[None], [layer])[layer][0].astype(np.float64)
    size = image.shape[-2:]
    base = select_scores(adapter.logits(np.full((1, *image.shape), baseline, np.float32)), np.array([cls]), score)[0]
    channels = range(len(activations)) if only is None else only
    gains = {}
    for k in channels:
        up = F.interpolate(torch.from_numpy(activations[k])[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        if up.max() > up.min():
            mask = (up - up.min()) / (up.max() - up.min())
        else:
            mask = np.zeros_like(up)  # a constant channel masks everything
        masked = (baseline + mask * (image - baseline)).astype(np.float32)
        gains[k] = float(select_scores(adapter.logits(masked[None]), np.array([cls]), score)[0]) - float(base)
    total = sum(np.exp(g) for g in gains.values())
    layer_map = np.maximum(sum(np.exp(g) / total * activations[k] for k, g in gains.items()), 0)
    upsampled = F.interpolate(torch.from_numpy(layer_map)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return upsampled.numpy(), gains


def count_forwards(adapter) -> list[int]:
    """Record the batch size of every forward the adapter runs (an instance
    attribute shadows the method; nothing is left on the model)."""
    sizes: list[int] = []
    logits = adapter.logits

    def counted(inputs):
        sizes.append(len(inputs))
        return logits(inputs)

    adapter.logits = counted
    return sizes


@pytest.mark.parametrize("layer, score, baseline", [("features.5", "logit", 0.0), ("features.2", "prob", 0.5), ("features.0", "logit", -1.0)])
def test_matches_naive_reference_on_small_net(layer, score, baseline, small_inputs):
    adapter = small_torch_adapter()
    result = cnnviz_core.run("score_cam", adapter, small_inputs, target=[3, "top1"], layer=layer, score=score,
                             baseline=baseline, batch_size=5)
    logits = adapter.logits(small_inputs)
    assert list(result.classes) == [3, int(np.argmax(logits[1]))]
    for i, cls in enumerate(result.classes):
        expected, gains = naive_score_cam(adapter, small_inputs[i], cls, layer, baseline, score)
        np.testing.assert_allclose(result.maps[i], expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
        np.testing.assert_allclose(result.extras["channel_gains"][i], [gains[k] for k in sorted(gains)], atol=1e-5)
        np.testing.assert_allclose(result.scores[i], select_scores(logits, result.classes, score)[i], atol=1e-6)
    assert result.maps.shape == (2, 32, 32) and result.maps.dtype == np.float32
    assert result.extras["layer_map"].shape[0] == 2
    np.testing.assert_allclose(result.extras["channel_weights"].sum(axis=1), 1.0, atol=1e-6)
    assert result.maps.max() > 0 and result.maps.max() != pytest.approx(1.0)  # raw, not normalized
    assert hook_total(adapter.module) == 0


def test_constant_channel_gets_an_empty_mask_and_no_forward():
    """TinyCamNet's channel 0 is relu(r - b): all zero when blue exceeds red everywhere."""
    adapter = TorchAdapter(TinyCamNet(), "tiny", IDENTITY)
    image = tiny_input()
    image[0, 2] = 3.0
    activations = adapter.activations(image, ["features"])["features"][0]
    assert not activations[0].any() and activations[1].any()
    assert adapter.num_classes == 3  # found by a forward, now cached: checking the target runs none later
    forwards = count_forwards(adapter)
    result = cnnviz_core.run("score_cam", adapter, image, target=1, layer="features")
    # one masked copy, for channel 1; none for channel 0 (the image and the
    # baseline run through logits_and_activations)
    assert forwards == [1]
    del adapter.logits
    expected, gains = naive_score_cam(adapter, image[0], 1, "features")
    assert result.extras["channel_gains"][0, 0] == 0.0 and gains[0] == pytest.approx(0.0, abs=1e-7)
    weights = np.exp([0.0, gains[1]]) / np.exp([0.0, gains[1]]).sum()
    np.testing.assert_allclose(result.extras["channel_weights"][0], weights, rtol=1e-5)
    np.testing.assert_allclose(result.maps[0], expected, atol=1e-6)


def test_channel_subset_scores_the_most_varied_channels(small_inputs):
    adapter = small_torch_adapter()
    layer = "features.5"
    activations = adapter.activations(small_inputs[:1], [layer])[layer][0]
    top = np.sort(np.argsort(-activations.reshape(16, -1).var(axis=1))[:5])
    result = cnnviz_core.run("score_cam", adapter, small_inputs[:1], target=2, layer=layer, channels=5)
    expected, _ = naive_score_cam(adapter, small_inputs[0], 2, layer, only=top)
    np.testing.assert_allclose(result.maps[0], expected, atol=1e-5)
    weights, gains = result.extras["channel_weights"][0], result.extras["channel_gains"][0]
    assert set(np.flatnonzero(weights)) == set(top) and weights.sum() == pytest.approx(1.0)
    assert np.isnan(np.delete(gains, top)).all() and np.isfinite(gains[top]).all()
    # asking for at least as many channels as the layer has is the exact method
    every = cnnviz_core.run("score_cam", adapter, small_inputs[:1], target=2, layer=layer, channels=16)
    exact = cnnviz_core.run("score_cam", adapter, small_inputs[:1], target=2, layer=layer)
    np.testing.assert_array_equal(every.maps, exact.maps)


def test_out_of_memory_halves_the_masked_batch(small_inputs):
    adapter = small_torch_adapter()
    logits = adapter.logits
    ran: list[int] = []

    def limited(inputs):
        if len(inputs) > 4:
            raise MemoryError("simulated: more than 4 masked copies")
        ran.append(len(inputs))
        return logits(inputs)

    adapter.logits = limited
    scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
    result = cnnviz_core.run("score_cam", adapter, small_inputs, target=1, scheduler=scheduler, batch_size=16)
    # halved twice on the first image (from 16, or the fewer channels it has to score), then kept for the second
    first, second = scheduler.backoffs
    assert second == first // 2 and max(ran) == second // 2 <= 4
    del adapter.logits
    reference = cnnviz_core.run("score_cam", adapter, small_inputs, target=1)
    np.testing.assert_allclose(result.maps, reference.maps, atol=1e-6)


def test_small_net_torch_and_onnx_agree(small_onnx_path, small_inputs):
    torch_model, onnx_model = small_torch_adapter(), cnnviz_core.load_model(small_onnx_path)
    for layers in (SMALL_LAYERS, {"torch": None, "onnx": None}):  # named, and each adapter's default layer
        torch_result = cnnviz_core.run("score_cam", torch_model, small_inputs, target=[0, "top1"], layer=layers["torch"])
        onnx_result = cnnviz_core.run("score_cam", onnx_model, small_inputs, target=[0, "top1"], layer=layers["onnx"])
        np.testing.assert_array_equal(onnx_result.classes, torch_result.classes)
        scale = np.abs(torch_result.maps).max()
        assert scale > 0
        np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-4 * scale)
        np.testing.assert_allclose(onnx_result.extras["channel_weights"], torch_result.extras["channel_weights"], atol=1e-5)


@pytest.fixture(scope="module")
def lite0_cat_runs(lite0, lite0_onnx, photos):
    """Score-CAM of the cat pasted on grey at blocks.4 (112 channels), on both
    adapters, with the forwards each ran and its wall time."""
    runs = {}
    for kind, model in (("torch", lite0), ("onnx", cnnviz_core.load_model(lite0_onnx))):
        forwards = count_forwards(model)
        started = time.perf_counter()
        result = cnnviz_core.run("score_cam", model, [photos["cat_on_grey"]], target="Egyptian cat", layer=LITE0_MID[kind])
        runs[kind] = (result, time.perf_counter() - started, list(forwards))
        del model.logits
    return runs


def test_pretrained_map_peaks_on_the_cat(lite0_cat_runs):
    result, _, _ = lite0_cat_runs["torch"]
    assert result.maps.shape == (1, 224, 224) and list(result.classes) == [285]
    assert in_box(result.maps[0])
    # more than half the map's mass on the fifth of the image the cat covers
    assert result.maps[0][CAT_BOX].sum() / result.maps[0].sum() > 0.5
    assert result.extras["channel_weights"].shape == (1, 112)


def test_pretrained_torch_and_onnx_agree_at_a_mid_layer(lite0_cat_runs):
    (torch_result, torch_s, torch_forwards), (onnx_result, onnx_s, onnx_forwards) = lite0_cat_runs["torch"], lite0_cat_runs["onnx"]
    np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-4 * np.abs(torch_result.maps).max())
    np.testing.assert_allclose(onnx_result.scores, torch_result.scores, atol=1e-3)
    # the cost: one masked copy per non-constant channel, 64 per pass
    for result, forwards in ((torch_result, torch_forwards), (onnx_result, onnx_forwards)):
        scored = int((result.extras["channel_gains"][0] != 0).sum())
        assert 64 < scored <= 112 and sum(forwards) == scored and max(forwards) == 64
    print(f"score_cam lite0 blocks.4, one image: torch {torch_s:.1f} s, ONNX {onnx_s:.1f} s")


def test_unknown_layer_is_refused_before_any_forward(small_onnx_path, small_inputs):
    adapter = small_torch_adapter()
    assert adapter.num_classes == 5  # found by a forward, now cached: checking the target runs none later
    calls = []
    handle = adapter.module.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(cnnviz_core.LayerNotFoundError, match="features.9"):
            cnnviz_core.run("score_cam", adapter, small_inputs, layer="features.9")
    finally:
        handle.remove()
    assert calls == [] and hook_total(adapter.module) == 0
    with pytest.raises(cnnviz_core.LayerNotFoundError):  # a torch module name is no ONNX node
        cnnviz_core.run("score_cam", cnnviz_core.load_model(small_onnx_path), small_inputs, layer="features.5")


def test_layer_without_feature_map_is_an_input_error(small_onnx_path, small_inputs):
    adapter = small_torch_adapter()
    adapter.module.train()
    with pytest.raises(cnnviz_core.InputError, match=r"\(B, C, H, W\) feature map"):
        cnnviz_core.run("score_cam", adapter, small_inputs, layer="fc")
    assert hook_total(adapter.module) == 0 and adapter.module.training
    with pytest.raises(cnnviz_core.InputError, match="feature map"):
        cnnviz_core.run("score_cam", cnnviz_core.load_model(small_onnx_path), small_inputs, layer="/fc/Gemm")
