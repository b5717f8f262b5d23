"""fooling_images: evolved (gradient-free) images the pretrained model labels
with high confidence, on the torch model and on its ONNX export; the gradient
encoding on torch only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import CapabilityError, InputError, TargetError

from conftest import hook_total, state_copy, states_equal

PINWHEEL, CHAIN_MAIL, FLAMINGO = 723, 490, 130  # classes that smooth patterns / pixel noise fool quickly


@pytest.fixture(scope="module")
def lite96(lite0):
    """The pretrained module fed 96 x 96 images (the weights work at other sizes)."""
    return TorchAdapter(lite0.module, lite0.name, dataclasses.replace(lite0.config, input_size=(96, 96)), lite0.labels)


@pytest.fixture(scope="module")
def onnx96(lite96, tmp_path_factory):
    path = tmp_path_factory.mktemp("fooling") / "lite0_96.onnx"
    export_onnx(lite96, path)
    return cnnviz_core.load_model(str(path))


def probabilities(adapter, pixels: np.ndarray) -> np.ndarray:
    mean, std = np.array(adapter.config.mean)[:, None, None], np.array(adapter.config.std)[:, None, None]
    logits = adapter.logits(((pixels - mean) / std).astype(np.float32)).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_fooled(adapter, result, classes, at_least=0.9, elitist=True):
    probs = probabilities(adapter, result.images)  # the model itself, on the returned pixels
    for i, cls in enumerate(classes):
        record = result.records[i]
        assert probs[i, cls] >= at_least, f"{record['target_label']}: {probs[i, cls]:.3f}"
        assert record["confidence"] == pytest.approx(probs[i, cls], abs=1e-3) and record["reached"]
        assert result.classes[i] == cls
        curve = result.history["objective"][i]
        if elitist:
            assert np.all(np.diff(curve) >= -1e-6), "elitist selection: the best never gets worse"
        else:
            assert curve[-1] > 100 * curve[0]  # the ascent raised the probability from noise
        assert curve[-1] == pytest.approx(probs[i, cls], abs=1e-3)
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0


def test_smooth_and_direct_fool_the_torch_model(lite96):
    result = cnnviz_core.run("fooling_images", lite96, target=[PINWHEEL], encoding="smooth", generations=20)
    check_fooled(lite96, result, [PINWHEEL])
    assert result.records[0]["generations"] < 20  # stopped at --confidence
    result = cnnviz_core.run("fooling_images", lite96, target=["chain mail"], encoding="direct", generations=20)
    check_fooled(lite96, result, [CHAIN_MAIL])


def test_fools_the_onnx_model_without_gradients(onnx96):
    assert cnnviz_core.Capability.GRADIENTS not in onnx96.capabilities
    result = cnnviz_core.run("fooling_images", onnx96, target=[PINWHEEL], encoding="smooth", generations=20)
    check_fooled(onnx96, result, [PINWHEEL])
    direct = cnnviz_core.run("fooling_images", onnx96, target=[CHAIN_MAIL], encoding="direct", generations=20)
    check_fooled(onnx96, direct, [CHAIN_MAIL])


def test_gradient_encoding_on_torch_and_refused_on_onnx(lite96, onnx96):
    result = cnnviz_core.run("fooling_images", lite96, target=[FLAMINGO], encoding="gradient", generations=30, confidence=0.95,
                             step_size=4 / 255)
    check_fooled(lite96, result, [FLAMINGO], elitist=False)
    assert result.records[0]["generations"] < 30
    with pytest.raises(CapabilityError, match=r"gradients.*--encoding smooth"):
        cnnviz_core.run("fooling_images", onnx96, target=[FLAMINGO], encoding="gradient")


def test_seed_and_batching(onnx96):
    settings = dict(target=[FLAMINGO, PINWHEEL], encoding="smooth", generations=3, population=6, parents=2, confidence=1.0)
    first = cnnviz_core.run("fooling_images", onnx96, seed=1, batch_size=2, **settings)
    again = cnnviz_core.run("fooling_images", onnx96, seed=1, batch_size=1, **settings)
    other = cnnviz_core.run("fooling_images", onnx96, seed=2, batch_size=2, **settings)
    np.testing.assert_array_equal(first.images, again.images)
    assert np.abs(first.images - other.images).max() > 0.05
    assert [r["evaluations"] for r in first.records] == [6 * 4, 6 * 4]  # first population + 3 generations


def test_model_left_as_found(lite96):
    module = lite96.module
    module.train()
    flags = [p.requires_grad for p in module.parameters()]
    before, hooks = state_copy(module), hook_total(module)
    try:
        for encoding in ("smooth", "gradient"):
            cnnviz_core.run("fooling_images", lite96, target=[FLAMINGO], encoding=encoding, generations=1, population=2, parents=1)
        assert module.training and all(m.training for m in module.modules())
        assert states_equal(before, state_copy(module))
        assert [p.requires_grad for p in module.parameters()] == flags
        assert hook_total(module) == hooks
    finally:
        module.eval()


def test_bad_requests_are_refused(lite96):
    with pytest.raises(TargetError, match="class"):
        cnnviz_core.run("fooling_images", lite96, target=["top1"])
    with pytest.raises(TargetError, match="needs a target"):
        cnnviz_core.run("fooling_images", lite96)
    with pytest.raises(TargetError, match="class"):
        cnnviz_core.run("fooling_images", lite96, target=["blocks.6:0"])
    with pytest.raises(InputError, match="targets alone"):
        cnnviz_core.run("fooling_images", lite96, np.zeros((1, 3, 96, 96), np.float32), target=[PINWHEEL])
    with pytest.raises(InputError, match="parents"):
        cnnviz_core.run("fooling_images", lite96, target=[PINWHEEL], population=4, parents=8)
    with pytest.raises(InputError, match="encoding"):
        cnnviz_core.run("fooling_images", lite96, target=[PINWHEEL], encoding="cppn")


def test_cli_on_the_onnx_file(capsys, onnx96, tmp_path):
    from cnnviz_core.cli import main

    code = main(["run", "fooling_images", "--model", onnx96.path, "--target", "pinwheel", "--generations", "20", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "class723_pinwheel.fooling_images.png").exists() and "pinwheel" in out
    code = main(["run", "fooling_images", "--model", onnx96.path, "--target", "pinwheel", "--encoding", "gradient", "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert code == 2 and "--encoding smooth" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()
