"""adversarial: FGSM, iterative FGSM / PGD and L-BFGS on the pretrained model,
checked against the model itself (re-classification, own 8-bit quantization)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import CapabilityError, InputError, TargetError

from conftest import hook_total, state_copy, states_equal

OSTRICH = 9
EPSILON = 8 / 255


def at_size(adapter: TorchAdapter, size: int) -> TorchAdapter:
    """The same pretrained module fed smaller images (the weights work at other sizes)."""
    return TorchAdapter(adapter.module, adapter.name, dataclasses.replace(adapter.config, input_size=(size, size)), adapter.labels)


@pytest.fixture(scope="module")
def lite96(lite0):
    return at_size(lite0, 96)


def top1(adapter, pixels: np.ndarray) -> np.ndarray:
    mean, std = np.array(adapter.config.mean)[:, None, None], np.array(adapter.config.std)[:, None, None]
    return adapter.logits(((pixels - mean) / std).astype(np.float32)).argmax(axis=1)


def probabilities(adapter, pixels: np.ndarray) -> np.ndarray:
    mean, std = np.array(adapter.config.mean)[:, None, None], np.array(adapter.config.std)[:, None, None]
    logits = adapter.logits(((pixels - mean) / std).astype(np.float32)).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_targeted_pgd_makes_chelsea_an_ostrich_within_8_over_255(lite0, photos):
    result = cnnviz_core.run("adversarial", lite0, [photos["chelsea"]], target="ostrich", attack="pgd", epsilon=EPSILON)
    record = result.records[0]
    image, start = result.images[0], result.inputs[0]
    assert top1(lite0, start[None])[0] != OSTRICH
    assert record["success"] and record["targeted"] and record["class_after"] == OSTRICH
    assert top1(lite0, result.images)[0] == OSTRICH  # the model itself agrees
    assert 0.0 <= image.min() and image.max() <= 1.0
    linf = float(np.abs(image - start).max())
    assert linf <= EPSILON + 1e-6 and record["linf"] == pytest.approx(linf, abs=1e-6)
    assert record["l2"] == pytest.approx(float(np.linalg.norm(image - start)), rel=1e-4)
    # the objective (the ostrich's probability) rose from the clean image's
    curve = result.history["objective"][0]
    assert curve[-1] > 10 * record["objective_before"] and curve[-1] == pytest.approx(record["objective_after"], abs=1e-5)
    assert 1 <= record["steps"] <= 20 and record["first_success_step"] == record["steps"]  # early stop
    # 8-bit survival as reported matches our own re-quantization
    quantized = np.round(image * 255) / 255
    assert record["survives_8bit"] == bool(top1(lite0, quantized[None])[0] == OSTRICH)
    assert record["class_8bit"] == int(top1(lite0, quantized[None])[0])
    # the perturbation picture: grey + gain * r, the gain recorded
    picture = result.pictures["perturbation"][0]
    expected = np.clip(0.5 + record["amplification"] * (image - start), 0, 1)
    np.testing.assert_allclose(picture, expected, atol=1e-5)
    np.testing.assert_allclose(result.pictures["input"][0], start)


def test_fgsm_untargeted_changes_a_prediction(lite0, photos):
    names = ["chelsea", "coffee", "astronaut"]
    result = cnnviz_core.run("adversarial", lite0, [photos[n] for n in names], target="top1", attack="fgsm")
    before = top1(lite0, result.inputs)
    after = top1(lite0, result.images)
    for i, record in enumerate(result.records):
        assert not record["targeted"] and record["class_before"] == before[i] and record["class_after"] == after[i]
        assert record["success"] == bool(after[i] != before[i])
        assert record["steps"] == 1
        # one signed step of epsilon: every pixel moved by epsilon unless [0, 1] clipped it
        moved = np.abs(result.images[i] - result.inputs[i])
        assert moved.max() == pytest.approx(EPSILON, abs=1e-6) and np.mean(np.isclose(moved, EPSILON, atol=1e-6)) > 0.9
        quantized = np.round(result.images[i] * 255) / 255
        assert record["survives_8bit"] == bool(top1(lite0, quantized[None])[0] != before[i])
    assert (after != before).any(), f"FGSM changed no prediction: {[r['label_after'] for r in result.records]}"


def test_lbfgs_reaches_the_target_with_a_small_l2(lite96, photos):
    result = cnnviz_core.run("adversarial", lite96, [photos["chelsea"]], target=OSTRICH, attack="lbfgs", c=10.0, searches=3, steps=8)
    record = result.records[0]
    image, start = result.images[0], result.inputs[0]
    assert record["success"] and top1(lite96, result.images)[0] == OSTRICH
    assert 0.0 <= image.min() and image.max() <= 1.0
    # far smaller than the 8/255 FGSM step over the whole image (its L2 is eps * sqrt(n))
    assert record["l2"] < 0.1 * EPSILON * np.sqrt(image.size)
    assert record["c"] > 0 and record["steps"] >= 1
    quantized = np.round(image * 255) / 255
    assert record["survives_8bit"] == bool(top1(lite96, quantized[None])[0] == OSTRICH)
    assert result.history["objective"].shape == (1, 3)


def test_seed_batching_and_random_start(lite96, photos):
    inputs = [photos["chelsea"], photos["coffee"]]
    settings = dict(target=OSTRICH, attack="pgd", steps=2, random_start=True, early_stop=False)
    first = cnnviz_core.run("adversarial", lite96, inputs, seed=3, batch_size=2, **settings)
    again = cnnviz_core.run("adversarial", lite96, inputs, seed=3, batch_size=1, **settings)
    other = cnnviz_core.run("adversarial", lite96, inputs, seed=4, batch_size=2, **settings)
    np.testing.assert_allclose(first.images, again.images, atol=1e-6)
    assert np.abs(first.images - other.images).max() > 0.01
    assert all(r["steps"] == 2 for r in first.records)  # no early stop: every step taken
    # with no early stop the objective after the last step is the one of the final image
    probs = probabilities(lite96, first.images)[:, OSTRICH]
    np.testing.assert_allclose(first.history["objective"][:, -1], probs, atol=1e-4)


def test_model_left_as_found(lite96, photos):
    module = lite96.module
    module.train()
    flags = [p.requires_grad for p in module.parameters()]
    before, hooks = state_copy(module), hook_total(module)
    try:
        cnnviz_core.run("adversarial", lite96, [photos["coffee"]], target="top1", attack="pgd", steps=2)
        assert module.training and all(m.training for m in module.modules())
        assert states_equal(before, state_copy(module))
        assert [p.requires_grad for p in module.parameters()] == flags
        assert hook_total(module) == hooks
    finally:
        module.eval()


def test_bad_inputs_are_refused(lite96, small_onnx_path):
    outside = np.full((1, 3, 96, 96), 0.5, dtype=np.float32)
    outside[0, 0, 0, 0] = 1.5
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        cnnviz_core.run("adversarial", lite96, outside, target=OSTRICH)
    with pytest.raises(InputError, match="96x96"):
        cnnviz_core.run("adversarial", lite96, np.zeros((1, 3, 64, 64), np.float32), target=OSTRICH)
    with pytest.raises(InputError, match="input image"):
        cnnviz_core.run("adversarial", lite96, None, target=OSTRICH)
    with pytest.raises(TargetError, match="class"):
        cnnviz_core.run("adversarial", lite96, np.zeros((1, 3, 96, 96), np.float32), target="blocks.6:0")
    with pytest.raises(InputError, match="epsilon"):
        cnnviz_core.run("adversarial", lite96, np.zeros((1, 3, 96, 96), np.float32), target=OSTRICH, epsilon=2.0)
    with pytest.raises(InputError, match="attack"):
        cnnviz_core.run("adversarial", lite96, np.zeros((1, 3, 96, 96), np.float32), target=OSTRICH, attack="cw")
    with pytest.raises(CapabilityError, match="gradients"):
        cnnviz_core.run("adversarial", cnnviz_core.load_model(small_onnx_path), np.zeros((1, 3, 32, 32), np.float32), target=0)


def test_saved_record_carries_the_facts(lite96, photos, tmp_path):
    result = cnnviz_core.run("adversarial", lite96, [photos["chelsea"]], target=OSTRICH, attack="fgsm")
    files = result.save(tmp_path)
    names = {f.split("/")[-1] for f in files}
    stem = "adversarial.class9_ostrich"  # file names carry the target
    assert {f"chelsea.{stem}.png", f"chelsea.{stem}.perturbation.png", f"chelsea.{stem}.input.png", f"{stem}.json"} <= names
    import json

    item = json.loads((tmp_path / f"{stem}.json").read_text())["items"][0]
    for key in ("success", "survives_8bit", "l2", "linf", "class_before", "confidence_before", "class_after", "confidence_after", "amplification"):
        assert key in item
    assert item["linf"] == pytest.approx(EPSILON, abs=1e-6)


def test_cli_runs_an_attack_with_boolean_flags(capsys, photos, tmp_path):
    from cnnviz_core.cli import main

    code = main(["run", "adversarial", "--model", "efficientnet_lite0", "--image", photos["coffee"], "--target", "ostrich",
                 "--attack", "pgd", "--steps", "2", "--no-early-stop", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    import json

    record = json.loads((tmp_path / "adversarial.class9_ostrich.json").read_text())  # file names carry the target
    assert record["params"]["early_stop"] is False and record["items"][0]["steps"] == 2
    assert (tmp_path / "coffee.adversarial.class9_ostrich.perturbation.png").exists()
