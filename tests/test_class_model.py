"""class_model on the pretrained EfficientNet-Lite0 (at 96 px, to stay fast):
the objective climbs for class, channel and neuron targets in both modes,
batching and seeds behave, the model is left as it was, bad requests get typed
errors; and the parameterization / transform helpers against known values."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.cli import main
from cnnviz_core.errors import InputError, LayerNotFoundError, TargetError
from cnnviz_plugins.synthesis.support.image_param import colour_mixing_matrix, spectrum_scale, ReadableImage
from cnnviz_plugins.synthesis.support.image_priors import anisotropic_total_variation
from cnnviz_plugins.synthesis.support.image_transforms import _sampling_matrix, random_affine
from conftest import hook_total, small_torch_adapter, state_copy, states_equal

SIZE = 96  # blocks.4 gives a 6x6 map here
TARGETS = [9, "blocks.4:5", "blocks.4:5@2,2"]  # ostrich logit, a channel's mean, one unit


@pytest.fixture(scope="module")
def lite0_96(lite0):
    """The session's pretrained model, read at 96 x 96 (the weights work at any size)."""
    return TorchAdapter(lite0.module, "efficientnet_lite0", dataclasses.replace(lite0.config, input_size=(SIZE, SIZE)), lite0.labels)


@pytest.fixture(autouse=True)
def one_thread():
    """Batched and single-item convolutions agree bit for bit only when one
    thread computes both (with several, the work splits by batch size and
    rounding differs in the last bit, which Adam's per-coefficient steps and a
    ReLU network's discontinuous gradient then amplify). One thread also keeps
    this file's time steady on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["readable", "plain"])
def test_objective_rises_for_class_channel_and_neuron_targets(lite0_96, mode):
    result = cnnviz_core.run("class_model", lite0_96, target=TARGETS, mode=mode, steps=16, device="cpu")

    assert result.images.shape == (3, 3, SIZE, SIZE) and result.images.dtype == np.float32
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0
    assert result.history["objective"].shape == (3, 16) and result.history["loss"].shape == (3, 16)
    for record, curve in zip(result.records, result.history["objective"]):
        # on the untransformed image: start (grey / the mean image) vs the final one
        assert record["end"] > record["start"] + 5.0, record
        assert curve[-4:].mean() > curve[:4].mean() + 3.0
    assert result.records[0]["mode"] == mode
    # the class target's logit became the model's favourite class well before 16 steps at this size
    assert result.classes.shape == (3,) and result.scores.shape == (3,)
    if mode == "readable":
        assert result.classes[0] == 9 and result.scores[0] > 0.5
    assert result.names == ["class9_ostrich", "blocks.4-5", "blocks.4-5-at-2-2"]


def test_loss_is_minus_objective_plus_penalties(lite0_96):
    bare = cnnviz_core.run("class_model", lite0_96, target=[9], steps=3, tv=0, l2=0, device="cpu")
    np.testing.assert_allclose(bare.history["loss"], -bare.history["objective"], rtol=1e-6)
    penalized = cnnviz_core.run("class_model", lite0_96, target=[9], steps=3, tv=5.0, device="cpu")
    assert (penalized.history["loss"] > -penalized.history["objective"]).all()


def test_batching_and_seeds(lite0_96):
    together = cnnviz_core.run("class_model", lite0_96, target=TARGETS, steps=4, batch_size=3, seed=3, device="cpu")
    apart = cnnviz_core.run("class_model", lite0_96, target=TARGETS, steps=4, batch_size=1, seed=3, device="cpu")
    other = cnnviz_core.run("class_model", lite0_96, target=TARGETS, steps=4, batch_size=3, seed=4, device="cpu")
    # per-item draws (start, shifts, scales, angles): one at a time gives the very same images
    np.testing.assert_array_equal(together.images, apart.images)
    np.testing.assert_allclose(together.history["objective"], apart.history["objective"], rtol=1e-5, atol=1e-5)
    assert np.abs(together.images - other.images).mean() > 1e-3
    assert np.abs(together.images[1] - together.images[2]).mean() > 1e-3  # items differ from each other


def test_model_weights_mode_and_hooks_are_left_as_they_were(lite0_96):
    module = lite0_96.module
    before, flags = state_copy(module), [p.requires_grad for p in module.parameters()]
    module.train()
    try:
        cnnviz_core.run("class_model", lite0_96, target=[9, "blocks.4:5"], steps=2, device="cpu")
        assert module.training and all(m.training for m in module.modules())
    finally:
        module.eval()
    assert states_equal(before, state_copy(module))
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())
    assert hook_total(module) == 0


def test_model_restored_after_an_error_in_the_forward():
    adapter = small_torch_adapter()
    module = adapter.module
    module.train()
    module.fail = True
    with pytest.raises(RuntimeError, match="injected failure"):
        cnnviz_core.run("class_model", adapter, target=[1], steps=2)
    assert hook_total(module) == 0
    assert module.training and all(p.requires_grad for p in module.parameters())


def test_bad_requests_get_typed_errors(lite0_96):
    with pytest.raises(TargetError, match="top1 needs an input image"):
        cnnviz_core.run("class_model", lite0_96, target="top1", steps=1)
    with pytest.raises(LayerNotFoundError, match="no layer 'blocks.99'"):
        cnnviz_core.run("class_model", lite0_96, target="blocks.99:1", steps=1)
    with pytest.raises(TargetError, match="112 channels"):
        cnnviz_core.run("class_model", lite0_96, target="blocks.4:500", steps=1)
    with pytest.raises(TargetError, match="outside"):
        cnnviz_core.run("class_model", lite0_96, target="blocks.4:5@6,0", steps=1)
    with pytest.raises(InputError, match="--scales"):
        cnnviz_core.run("class_model", lite0_96, target=9, scales="1.1,0.9")
    with pytest.raises(InputError, match="readable"):
        cnnviz_core.run("class_model", lite0_96, target=9, mode="plain", fft=True)
    assert hook_total(lite0_96.module) == 0


def test_unset_settings_take_the_modes_defaults(lite0_96):
    result = cnnviz_core.run("class_model", lite0_96, target=[9], steps=1, jitter=0, device="cpu")
    recipe = result.records[0]["recipe"]
    assert recipe["jitter"] == 0 and recipe["fft"] and recipe["decorrelate"] and recipe["scales"] == [0.9, 1.1]
    plain = cnnviz_core.run("class_model", lite0_96, target=[9], steps=1, mode="plain", device="cpu").records[0]["recipe"]
    assert not plain["fft"] and plain["rotate"] == 0 and plain["l2"] > 0


def test_cli_makes_class_images(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "class_model", "--model", "efficientnet_lite0", "--target", "9", "blocks.4:3",
                 "--steps", "2", "--no-fft", "--out", str(out), "--quiet"]) == 0
    files = set(os.listdir(out))
    assert {"class9_ostrich.class_model.png", "blocks.4-3.class_model.png", "class_model.json",
            "class_model.history.objective.npy", "class_model.history.loss.npy"} <= files
    record = json.loads((out / "class_model.json").read_text())
    assert record["params"]["fft"] is False and record["items"][0]["recipe"]["fft"] is False


# -- the helpers -------------------------------------------------------------
def test_colour_matrix_reproduces_imagenet_colour_covariance():
    mixing = colour_mixing_matrix()
    # columns orthogonal, the strongest of unit length: M Mᵀ = Σ / λ_max
    gram = mixing.T @ mixing
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-4)  # the published vectors have 4 decimals
    assert math.isclose(np.sqrt(np.diag(gram)).max(), 1.0, rel_tol=1e-6)
    covariance = mixing @ mixing.T
    # natural colours: R, G and B strongly and positively correlated
    correlation = covariance / np.sqrt(np.outer(np.diag(covariance), np.diag(covariance)))
    assert (correlation[np.triu_indices(3, 1)] > 0.7).all()


def test_spectral_scale_gives_unit_variance_pixels_and_a_1_over_f_profile():
    height, width = 64, 48
    scale = spectrum_scale(height, width)
    assert scale.shape == (height, width // 2 + 1)
    generator = torch.Generator().manual_seed(0)
    # independent unit-variance complex coefficients (variance 1/2 per real part)
    coefficients = torch.randn((200, height, width // 2 + 1, 2), generator=generator) / math.sqrt(2)
    pixels = torch.fft.irfft2(torch.view_as_complex(coefficients) * scale, s=(height, width), norm="ortho")
    assert 0.9 < float(pixels.var()) < 1.1
    assert torch.isclose(scale[0, 4] / scale[0, 8], torch.tensor(2.0), rtol=1e-5)  # amplitude ∝ 1/f


def test_readable_image_starts_near_grey_in_unit_range():
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    pixels = ReadableImage(2, (32, 40), generators, "cpu").pixels().detach()
    assert pixels.shape == (2, 3, 32, 40)
    assert float((pixels - 0.5).abs().max()) < 0.05


def _shift(pixels: torch.Tensor, shift_y: int, shift_x: int, factor: float = 1.0, angle: float = 0.0) -> torch.Tensor:
    theta = torch.tensor([_sampling_matrix(pixels.shape[-2], pixels.shape[-1], shift_y, shift_x, factor, angle)])
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", align_corners=False)


def test_sampling_matrix_shifts_rotates_and_scales_about_the_centre():
    pixels = torch.rand((1, 3, 20, 30), generator=torch.Generator().manual_seed(0))
    shifted = _shift(pixels, 3, -2)
    torch.testing.assert_close(shifted[..., 3:, :-2], pixels[..., :-3, 2:])  # content moved down 3, left 2
    square = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    quarter = _shift(square, 0, 0, angle=math.pi / 2)
    assert torch.allclose(quarter, torch.rot90(square, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        quarter, torch.rot90(square, -1, dims=(2, 3)), atol=1e-5)
    # scaled up 2x: the centre 2x2 block spreads over the centre 4x4
    doubled = _shift(square, 0, 0, factor=2.0)
    assert torch.isclose(doubled[0, 0, 7:9, 7:9].mean(), square[0, 0, 7:9, 7:9].mean(), atol=0.1)


def test_random_affine_is_per_item_and_identity_without_transforms():
    pixels = torch.rand((2, 3, 24, 24), generator=torch.Generator().manual_seed(0))
    same = random_affine(pixels, [torch.Generator().manual_seed(0)] * 2)
    assert same is pixels
    a = random_affine(pixels, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)], jitter=4, scales=(0.9, 1.1), rotate=10)
    b = random_affine(pixels[1:], [torch.Generator().manual_seed(6)], jitter=4, scales=(0.9, 1.1), rotate=10)
    torch.testing.assert_close(a[1:], b)


def test_total_variation_by_hand():
    image = torch.zeros((1, 1, 2, 3))
    image[0, 0, 0, 1] = 1.0  # one bright pixel: 2 horizontal edges of 1 among 4, 1 vertical among 3
    np.testing.assert_allclose(anisotropic_total_variation(image).numpy(), [2 / 4 + 1 / 3], rtol=1e-6)
