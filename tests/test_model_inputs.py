"""Models that take or return more than the usual (B, 3, H, W) → (B, classes):
outputs that are a tuple, dict or named tuple (auxiliary heads) with the
``output=`` option picking the logits (``--output-key`` on the CLI, a graph
output of an ONNX file); any class count; non-square and larger inputs; input
sizes and channel counts the model cannot take refused with a typed error."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_core.cli import main
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import InputError, ModelLoadError
from conftest import hook_total
from tiny_models import SmallConvNet

SIZE = 32
CONFIG = dict(input_size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
Outputs = collections.namedtuple("Outputs", "logits aux")


class WithAuxiliary(nn.Module):
    """SmallConvNet's logits and an auxiliary head from its features, returned as a dict, tuple or named tuple."""

    def __init__(self, form: str, classes: int = 5):
        super().__init__()
        self.net = SmallConvNet(classes=classes)
        self.aux = nn.Linear(16, 7)
        self.form = form

    def forward(self, x):
        features = self.net.features(x)
        logits = self.net.fc(self.net.pool(features).flatten(1))
        aux = self.aux(features.mean(dim=(2, 3)))
        if self.form == "dict":
            return {"out": logits, "aux": aux}
        if self.form == "tuple":
            return logits, aux
        return Outputs(logits, aux)


def _plain(classes: int = 5):
    """The same network returning its logits only: what every method must match."""
    return cnnviz_core.load_model(SmallConvNet(classes=classes).eval(), **CONFIG)


def _inputs(count: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("form, output", [("dict", "out"), ("tuple", 0), ("tuple", "0"), ("named", "logits")])
def test_output_option_picks_the_logits_for_every_method(form, output):
    module = WithAuxiliary(form).eval()
    model = cnnviz_core.load_model(module, output=output, **CONFIG)
    plain = _plain()
    inputs = _inputs()

    np.testing.assert_allclose(model.logits(inputs), plain.logits(inputs), atol=1e-6)
    assert model.layers() == ["net", *("net." + n for n in plain.layers()), "aux"]  # the model's own layer names
    assert model.num_classes == 5
    for method, params in (("gradcam", {"layer": "net.features.5"}), ("saliency", {}), ("occlusion", {"window": 8, "stride": 8})):
        ours = cnnviz_core.run(method, model, inputs, normalized=True, target=[1, "top1"], **params)
        if "layer" in params:
            params = {"layer": "features.5"}
        expected = cnnviz_core.run(method, plain, inputs, normalized=True, target=[1, "top1"], **params)
        np.testing.assert_allclose(ours.maps, expected.maps, rtol=1e-5, atol=1e-6 * np.abs(expected.maps).max())
    assert hook_total(module) == 0 and not module.training


def test_the_users_module_keeps_its_own_flags_and_parameters():
    module = WithAuxiliary("dict").train()
    model = cnnviz_core.load_model(module, output="out", **CONFIG)
    cnnviz_core.run("gradcam", model, _inputs(), normalized=True, layer="net.features.5")
    assert module.training  # the run's eval mode was put back on the user's module itself
    assert [id(p) for p in model.module.parameters()] == [id(p) for p in module.parameters()]
    assert set(model.module.state_dict()) == set(module.state_dict())
    model.module.eval()
    assert not module.training and not module.net.training


def test_several_outputs_without_the_option_are_refused_listing_them():
    model = cnnviz_core.load_model(WithAuxiliary("dict").eval(), **CONFIG)
    with pytest.raises(InputError, match=r"'out' \(2, 5\), 'aux' \(2, 7\).*output=KEY_OR_INDEX.*--output-key"):
        model.logits(_inputs())
    with pytest.raises(InputError, match=r"'out' \(\d, 5\), 'aux' \(\d, 7\)"):
        cnnviz_core.run("occlusion", model, _inputs(), normalized=True, window=8, stride=8)


@pytest.mark.parametrize("form, wrong, listed", [("dict", "logits", "'out' (1, 5), 'aux' (1, 7)"), ("tuple", 2, "0 (1, 5), 1 (1, 7)"),
                                                 ("named", "out", "'logits' (1, 5), 'aux' (1, 7)")])
def test_a_wrong_output_key_names_the_outputs_there_are(form, wrong, listed):
    with pytest.raises(InputError, match=f"no tensor output {wrong!r}; its outputs: {listed}".replace("(", r"\(").replace(")", r"\)")):
        cnnviz_core.load_model(WithAuxiliary(form).eval(), output=wrong, **CONFIG)  # found by the size check at load


@pytest.mark.slow
def test_onnx_output_is_chosen_by_name_or_index_and_from_the_cli(tmp_path, capsys):
    path = tmp_path / "two_heads.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithAuxiliary("tuple").eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                          output_names=["main", "aux_first"], dynamic_axes={"input": {0: "b"}}, dynamo=False)
    inputs = _inputs()
    expected = _plain().logits(inputs)
    for choice in (None, "main", 0):
        model = cnnviz_core.load_model(str(path), output=choice, **CONFIG)
        np.testing.assert_allclose(model.logits(inputs), expected, atol=1e-4)
    aux = cnnviz_core.load_model(str(path), output=1, **CONFIG)
    assert aux.num_classes == 7
    with pytest.raises(InputError, match=r"no output 'logits'; its outputs: 0: 'main' \['b', 5\], 1: 'aux_first' \['b', 7\]"):
        cnnviz_core.load_model(str(path), output="logits", **CONFIG)

    out = tmp_path / "out"
    code = main(["run", "occlusion", "--model", str(path), "--image", "skimage:coffee", "--output-key", "aux_first",
                 "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--window", "8", "--stride", "8",
                 "--target", "6", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "explained 6" in printed.out  # class 6 exists only in the 7-class auxiliary output


@pytest.mark.parametrize("classes", [1, 2, 37])
def test_any_class_count(classes):
    model = _plain(classes)
    result = cnnviz_core.run("gradcam", model, _inputs(), normalized=True, target=[classes - 1, "top1"])
    assert model.num_classes == classes and result.maps.shape == (2, SIZE, SIZE)
    assert list(result.classes) == [classes - 1, int(np.argmax(model.logits(_inputs())[1]))]


@pytest.mark.parametrize("size", [(48, 80), (384, 512)])
def test_non_square_and_larger_inputs_where_the_model_takes_them(size):
    model = cnnviz_core.load_model(SmallConvNet().eval(), **{**CONFIG, "input_size": size})
    pixels = np.random.default_rng(2).integers(0, 256, (100, 60, 3), dtype=np.uint8)  # raw pixels, resized to the input size
    for method in ("gradcam", "occlusion"):
        result = cnnviz_core.run(method, model, pixels, window=size[0] // 4, stride=size[0] // 4) if method == "occlusion" \
            else cnnviz_core.run(method, model, pixels)
        assert result.maps.shape == (1, *size) and np.isfinite(result.maps).all()


def _tiny_resnet(**kwargs):
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=4, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64),
                             **kwargs).eval()


def test_a_one_channel_model_is_fed_the_grey_image_normalized_with_its_statistics():
    module = _tiny_resnet(in_chans=1)
    model = cnnviz_core.load_model(module, input_size=(64, 64), mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    grey = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)  # a grey image as (H, W) pixels

    batch = cnnviz_core.preprocess(model, [grey])
    with torch.no_grad():
        expected = module((torch.from_numpy(grey).float()[None, None] / 255 - 0.4) / 0.2).numpy()
    np.testing.assert_allclose(model.logits(batch), expected, rtol=1e-4, atol=1e-5)
    assert model.layers()[0] == "conv1" and model.module.conv1 is module.conv1  # the model's own layers
    for method in ("gradcam", "saliency", "occlusion"):
        result = cnnviz_core.run(method, model, [grey], **({"window": 16, "stride": 16} if method == "occlusion" else {}))
        assert result.maps.shape == (1, 64, 64) and np.isfinite(result.maps).all() and np.abs(result.maps).max() > 0
    assert hook_total(module) == 0


def test_other_channel_counts_are_refused_at_load_saying_why():
    with pytest.raises(ModelLoadError, match=r"takes 4-channel inputs.*feeds RGB images \(B, 3, H, W\).*Wrap it"):
        cnnviz_core.load_model(_tiny_resnet(in_chans=4), input_size=(64, 64))


def test_a_size_the_model_was_not_built_for_is_refused_at_load():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=64, depth=1, embed_dim=32,
                            num_heads=2).eval()
    with pytest.raises(InputError, match=r"cannot run on 64x96 inputs \(Input width \(96\) doesn't match model \(64\)"):
        cnnviz_core.load_model(vit, input_size=(64, 96))
    assert cnnviz_core.load_model(vit, input_size=(64, 64)).logits(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 4)
