"""style_transfer on the pretrained EfficientNet-Lite0 read at 64 px: the style
loss falls tenfold while the content loss stays bounded, with L-BFGS and
Adam; seeds and batching behave; the style may be a file, skimage:NAME, a PIL
image or an array; the model is left as it was; bad requests get typed errors
before any work."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.cli import main
from cnnviz_core.errors import ImageLoadError, InputError, LayerNotFoundError, TargetError
from cnnviz_plugins.synthesis.style_transfer import gram
from conftest import SMALL_CONFIG, hook_total, state_copy, states_equal
from test_inversion import FailsOnCall

SIZE = 64
STYLE = "skimage:immunohistochemistry"
STAGES = ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]


@pytest.fixture(scope="module")
def lite0_64(lite0):
    """The session's pretrained model, read at 64 x 64 (the weights work at any size)."""
    return TorchAdapter(lite0.module, "efficientnet_lite0", dataclasses.replace(lite0.config, input_size=(SIZE, SIZE)), lite0.labels)


@pytest.fixture(scope="module")
def photos_64(lite0_64, photos):
    pixels, _ = lite0_64.prepare([photos["chelsea"], photos["coffee"]])
    return cnnviz_core.images.denormalize(pixels, lite0_64.config)


def test_lbfgs_cuts_the_style_loss_tenfold_and_keeps_the_content(lite0_64, photos_64):
    result = cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, steps=80, device="cpu")

    curves = result.history
    assert set(curves) == {"objective", "content_loss", "style_loss", "tv_loss"} and curves["objective"].shape == (1, 80)
    record = result.records[0]
    assert record["content_layer"] == "blocks.4" and record["style_layers"] == STAGES  # the defaults on lite0
    assert record["content_loss_start"] == pytest.approx(0.0, abs=1e-6)  # it starts from the content image
    assert record["style_loss_start"] / curves["style_loss"][0, -1] >= 10.0
    assert record["style_loss_reduction"] == pytest.approx(record["style_loss_start"] / curves["style_loss"][0, -1], rel=1e-4)
    # content: the features move, but never further from the photo's than their own size
    assert 0.0 < curves["content_loss"].max() < 1.0
    assert np.all(np.diff(curves["objective"][0]) <= 1e-6 * curves["objective"][0, 0])  # the line search never goes uphill
    assert result.images.shape == (1, 3, SIZE, SIZE) and 0.0 <= result.images.min() and result.images.max() <= 1.0
    np.testing.assert_array_equal(result.pictures["content"], photos_64[:1])
    style = np.asarray(Image.fromarray(data.immunohistochemistry()).resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32) / 255
    np.testing.assert_allclose(result.pictures["style"][0], style.transpose(2, 0, 1), atol=1e-6)
    assert result.higher_is_better is False and result.classes.shape == (1,)


def test_adam_also_lowers_the_style_loss(lite0_64, photos_64):
    result = cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, optimizer="adam", steps=12, device="cpu")
    assert result.history["style_loss"][0, -1] < 0.6 * result.records[0]["style_loss_start"]
    assert result.history["objective"][0, -1] < result.records[0]["objective_start"]


def test_gram_is_normalized_by_the_number_of_elements():
    features = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    flat = features.reshape(2, 12)
    np.testing.assert_allclose(gram(features)[0].numpy(), (flat @ flat.T / 24).numpy(), rtol=1e-6)


def test_seeds_and_batching_with_per_item_lbfgs(lite0_64, photos_64):
    params = dict(style=STYLE, init="noise", steps=3, device="cpu")
    together = cnnviz_core.run("style_transfer", lite0_64, photos_64, batch_size=2, seed=5, **params)
    apart = cnnviz_core.run("style_transfer", lite0_64, photos_64, batch_size=1, seed=5, **params)
    again = cnnviz_core.run("style_transfer", lite0_64, photos_64, batch_size=2, seed=5, **params)
    other = cnnviz_core.run("style_transfer", lite0_64, photos_64, batch_size=2, seed=6, **params)
    np.testing.assert_array_equal(together.images, again.images)
    np.testing.assert_allclose(together.images, apart.images, atol=1e-4)
    np.testing.assert_allclose(together.history["style_loss"], apart.history["style_loss"], rtol=1e-3)
    assert np.abs(together.images - other.images).max() > 0.1  # another seed, another noise


def test_style_given_as_path_pil_or_array_is_the_same_style(lite0_64, photos_64, photos, tmp_path):
    params = dict(steps=1, device="cpu")
    from_path = cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=photos["astronaut"], **params)
    astronaut = data.astronaut()
    from_pil = cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=Image.fromarray(astronaut), **params)
    from_array = cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=astronaut.transpose(2, 0, 1) / 255.0, **params)
    np.testing.assert_array_equal(from_path.pictures["style"], from_pil.pictures["style"])
    np.testing.assert_array_equal(from_path.images, from_pil.images)
    np.testing.assert_allclose(from_path.images, from_array.images, atol=1e-6)
    # the record names an in-memory style instead of holding its pixels
    from_pil.save(tmp_path)
    record = json.loads((tmp_path / "style_transfer.json").read_text())
    assert record["params"]["style"] == "<in-memory image 512x512>"


def test_model_left_as_it_was(lite0_64, photos_64):
    module = lite0_64.module
    before = state_copy(module)
    flags = [p.requires_grad for p in module.parameters()]
    module.train()
    try:
        for optimizer in ("lbfgs", "adam"):
            cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, optimizer=optimizer, steps=2, device="cpu")
            assert module.training and all(m.training for m in module.modules())
    finally:
        module.eval()
    assert hook_total(module) == 0
    assert states_equal(before, state_copy(module))
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())


def test_an_error_mid_run_leaves_the_model_as_it_was():
    adapter = TorchAdapter(FailsOnCall(call=5), "fails", SMALL_CONFIG)
    module = adapter.module
    module.train()
    before = state_copy(module)
    pixels = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(RuntimeError, match="injected failure"):  # style, content, start, step 1; the 5th call fails
        cnnviz_core.run("style_transfer", adapter, pixels, style=STYLE, style_layers=["net.features.2", "net.features"],
                        content_layer="net.features", steps=5, device="cpu")
    assert module.calls == 5
    assert hook_total(module) == 0 and states_equal(before, state_copy(module))
    assert module.training and all(m.training for m in module.modules())
    assert all(p.requires_grad for p in module.parameters())


def test_bad_requests_fail_before_any_work(lite0_64, photos_64, tmp_path):
    calls = []
    counter = lite0_64.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        for style in (str(broken), str(tmp_path / "missing.jpg")):
            with pytest.raises(ImageLoadError, match="cannot read image"):
                cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=style, device="cpu")
        with pytest.raises(InputError, match="not a bundled scikit-image sample"):
            cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style="skimage:mona_lisa", device="cpu")
        with pytest.raises(InputError, match="needs a style image"):
            cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], device="cpu")
        with pytest.raises(InputError, match="floats in"):
            cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=np.full((8, 8, 3), 2.0), device="cpu")
        assert calls == []  # nothing ran through the model
    finally:
        counter.remove()
    with pytest.raises(LayerNotFoundError, match="blocks.42"):
        cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, content_layer="blocks.42", device="cpu")
    with pytest.raises(LayerNotFoundError, match="nope"):
        cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, style_layers="blocks.1, nope", device="cpu")
    with pytest.raises(InputError, match="Gram"):
        cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], style=STYLE, style_layers="classifier", device="cpu")
    with pytest.raises(TargetError, match="neuron"):
        cnnviz_core.run("style_transfer", lite0_64, photos_64[:1], target="blocks.2:1", style=STYLE, device="cpu")
    assert hook_total(lite0_64.module) == 0


def test_cli_with_a_scikit_image_style(photos, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "style_transfer", "--model", "efficientnet_lite0", "--image", photos["coffee"], "--style", STYLE,
                 "--style-layers", "blocks.1,blocks.2", "--content-layer", "blocks.2", "--steps", "1", "--out", str(out), "--quiet"])
    assert code == 0
    item = json.loads((out / "style_transfer.json").read_text())["items"][0]
    assert item["style_layers"] == ["blocks.1", "blocks.2"] and item["content_layer"] == "blocks.2"
    for suffix in ("", ".content", ".style"):
        assert (out / f"coffee.style_transfer{suffix}.png").exists()
    assert main(["run", "style_transfer", "--model", "efficientnet_lite0", "--image", photos["coffee"],
                 "--style", str(tmp_path / "none.png"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert not (tmp_path / "x").exists()
