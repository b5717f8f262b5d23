"""Inputs that cannot be silently wrong, on the pretrained EfficientNet-Lite0:
chelsea given as a file, a uint8 array, a list, a torchvision read_image
tensor, a PIL image, skimage:chelsea, float pixels (ToTensor style) or a
preprocess() batch scores the same Egyptian-cat logit (about 10.48); an
undeclared [0, 1] tensor, which used to score a different logit without a
word, now warns how to declare it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.io import read_image
from torchvision.transforms.functional import to_tensor

import cnnviz_core
from cnnviz_core.cli import main
from cnnviz_core.synthesis_inputs import starting_pixels

pytestmark = [pytest.mark.slow,  # torchvision 0.29 says its decoders move to torchcodec; read_image is what users call today
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")]

EGYPTIAN_CAT = 285
FLOAT_RTOL = 1e-3


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skdata.chelsea()  # (300, 451, 3) uint8


@pytest.fixture(scope="module")
def file_logits(lite0, photos) -> np.ndarray:
    """The reference: chelsea read from its PNG file."""
    batch, _ = lite0.prepare([photos["chelsea"]])
    logits = lite0.logits(batch)[0]
    assert int(logits.argmax()) == EGYPTIAN_CAT and logits[EGYPTIAN_CAT] > 10
    return logits


def logits_of(adapter, inputs, **declared) -> np.ndarray:
    batch, _ = adapter.prepare(inputs, **declared)
    return adapter.logits(batch)


def test_uint8_forms_give_the_files_logits_exactly(lite0, photos, chelsea, file_logits):
    forms = {
        "uint8 (H, W, 3)": chelsea,
        "uint8 (1, H, W, 3)": chelsea[None],
        "read_image tensor": read_image(photos["chelsea"]),
        "PIL image": Image.fromarray(chelsea),
        "skimage:chelsea": "skimage:chelsea",
    }
    for name, form in forms.items():
        np.testing.assert_array_equal(logits_of(lite0, form)[0], file_logits, err_msg=name)
    pair = logits_of(lite0, [chelsea, read_image(photos["chelsea"])])  # a list of arrays: a batch of two
    np.testing.assert_allclose(pair, np.stack([file_logits, file_logits]), rtol=1e-5, atol=1e-5)


def test_float_pixels_declared_as_pixels_give_the_files_logits(lite0, chelsea, file_logits):
    tensor = to_tensor(chelsea)  # (3, 300, 451) float32 in [0, 1]
    forms = {"(3, H, W) tensor": tensor, "(1, 3, H, W) tensor": tensor[None], "(3, H, W) float64 array": tensor.double().numpy()}
    for name, form in forms.items():
        logits = logits_of(lite0, form, normalized=False)[0]
        np.testing.assert_allclose(logits, file_logits, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * 10, err_msg=name)
        assert logits[EGYPTIAN_CAT] == pytest.approx(file_logits[EGYPTIAN_CAT], rel=FLOAT_RTOL)
    hwc = chelsea.astype(np.float32) / 255  # (H, W, 3) floats cannot be a model input: pixels, undeclared
    np.testing.assert_allclose(logits_of(lite0, hwc)[0], file_logits, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * 10)


def test_an_undeclared_unit_range_tensor_warns_and_declaring_it_fixes_the_score(lite0, chelsea, file_logits):
    """The user resized chelsea to 224 and called ToTensor: the tensor holds
    pixels, not the normalized input the model takes."""
    resized = to_tensor(Image.fromarray(chelsea).resize((224, 224), Image.Resampling.BICUBIC))[None]
    with pytest.warns(cnnviz_core.MethodWarning, match="normalized=False") as caught:
        result = cnnviz_core.run("saliency", lite0, resized, target=EGYPTIAN_CAT, device="cpu")
    assert "looks like raw pixels" in str(caught[0].message)
    assert abs(float(result.scores[0]) - file_logits[EGYPTIAN_CAT]) > 0.5  # taken as normalized: another score
    with warnings.catch_warnings():
        warnings.simplefilter("error", cnnviz_core.MethodWarning)
        declared = cnnviz_core.run("saliency", lite0, resized, target=EGYPTIAN_CAT, device="cpu", normalized=False)
    # the same PIL resize as the file path, then used exactly: the file's score
    assert float(declared.scores[0]) == pytest.approx(file_logits[EGYPTIAN_CAT], rel=1e-5)


def test_preprocess_returns_a_declared_batch_that_runs_without_a_warning(lite0, chelsea, file_logits):
    batch = cnnviz_core.preprocess(lite0, to_tensor(chelsea))
    assert isinstance(batch, cnnviz_core.NormalizedBatch) and batch.shape == (1, 3, 224, 224)
    assert batch.min() < 0  # normalized: mean = std = 0.5 maps [0, 1] to [-1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", cnnviz_core.MethodWarning)
        result = cnnviz_core.run("saliency", lite0, batch, device="cpu")
    assert int(result.classes[0]) == EGYPTIAN_CAT
    assert float(result.scores[0]) == pytest.approx(file_logits[EGYPTIAN_CAT], rel=FLOAT_RTOL)
    with pytest.raises(cnnviz_core.InputError, match="drop normalized=False"):
        cnnviz_core.run("saliency", lite0, batch, device="cpu", normalized=False)


def test_a_full_size_float_tensor_taken_as_normalized_is_refused_naming_the_size(lite0, chelsea):
    with pytest.raises(cnnviz_core.InputError, match="224x224") as info:
        cnnviz_core.run("saliency", lite0, to_tensor(chelsea)[None], device="cpu")
    assert "300x451" in str(info.value) and "normalized=False" in str(info.value)
    with pytest.raises(cnnviz_core.InputError, match="uint8 pixels"):
        cnnviz_core.run("saliency", lite0, chelsea, device="cpu", normalized=True)
    with pytest.raises(cnnviz_core.InputError, match="normalized= applies"):
        cnnviz_core.run("tsne", lite0, ["skimage:chelsea"], normalized=False)


def test_synthesis_starts_from_the_same_pixels_whatever_the_form(lite0, photos, chelsea):
    reference, names = starting_pixels([photos["chelsea"]], lite0, "test")
    assert names == ["chelsea"] and reference.min() >= 0 and reference.max() <= 1
    forms = {"uint8": (chelsea, {}), "read_image": (read_image(photos["chelsea"]), {}), "sample": ("skimage:chelsea", {}),
             "float pixels": (to_tensor(chelsea), {"normalized": False}),
             "preprocess() batch": (cnnviz_core.preprocess(lite0, chelsea), {})}
    for name, (form, declared) in forms.items():
        pixels, _ = starting_pixels(form, lite0, "test", **declared)
        np.testing.assert_allclose(pixels, reference, atol=1e-6, err_msg=name)
    exact = reference.copy()  # an undeclared float batch at the model's size is the pixels themselves
    np.testing.assert_array_equal(starting_pixels(exact, lite0, "test")[0], exact)
    with pytest.raises(cnnviz_core.InputError, match="224x224"):
        starting_pixels(to_tensor(chelsea)[None], lite0, "test")
    result = cnnviz_core.run("adversarial", lite0, chelsea, target="ostrich", attack="fgsm", device="cpu")
    np.testing.assert_allclose(result.inputs, reference, atol=1e-6)


def test_cli_takes_a_sample_by_name_and_names_outputs_after_it(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--out", str(out), "--quiet"]) == 0
    assert (out / "chelsea.saliency.heatmap.png").exists()
    assert main(["run", "saliency", "--model", "efficientnet_lite0", "--image", "skimage:mona_lisa",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert not (tmp_path / "bad").exists()
