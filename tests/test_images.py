"""Safe image loading and turning inputs into normalized model batches."""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import cnnviz_core
import cnnviz_core.images as images
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import ImageLoadError, InputError
from cnnviz_core.images import load_image, prepare_inputs, to_rgb, unique_names
from cnnviz_core.pixel_arrays import NormalizedBatch

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A small crop of scikit-image's chelsea photo, (H, W, 3) uint8, H != W."""
    return np.ascontiguousarray(skdata.chelsea()[100:148, 150:214])  # 48 x 64


@pytest.fixture
def cat_png(tmp_path, cat):
    path = tmp_path / "chelsea.png"
    Image.fromarray(cat).save(path)
    return path


@pytest.fixture
def cat_jpeg(tmp_path, cat):
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(cat).save(path, quality=90)
    return path


# -- load_image ------------------------------------------------------------------
def test_png_loads_as_rgb_with_exact_pixels(cat_png, cat):
    image = load_image(cat_png)
    assert image.mode == "RGB"
    assert image.size == (cat.shape[1], cat.shape[0])
    np.testing.assert_array_equal(np.asarray(image), cat)


def test_exif_orientation_is_applied(tmp_path, cat):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(cat).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (64, 48)
        assert raw.getexif()[ORIENTATION] == 6
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (48, 64)  # transposed
    # Orientation 6 means the stored image is rotated 90° clockwise for display.
    expected = np.rot90(cat, k=-1)
    difference = np.abs(np.asarray(image).astype(int) - expected.astype(int)).mean()
    assert difference < 8  # JPEG noise only; a wrong rotation would be far off


def test_rgba_is_composited_on_white(tmp_path, cat):
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:, :32, 3] = 0  # left half fully transparent
    rgba[:, 32:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[:, :32] == 255).all()
    np.testing.assert_array_equal(pixels[:, 32:], cat[:, 32:])


def test_half_transparent_rgba_blends_with_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    pixels = np.asarray(to_rgb(rgba))
    assert pixels.shape == (4, 4, 3)
    assert 120 <= pixels.min() and pixels.max() <= 135


def test_grayscale_becomes_rgb(tmp_path, cat):
    path = tmp_path / "gray.png"
    Image.fromarray(cat).convert("L").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 1], pixels[..., 2])


def test_palette_becomes_rgb(tmp_path, cat):
    path = tmp_path / "palette.png"
    Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "P"
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert np.abs(np.asarray(image).astype(int) - cat.astype(int)).mean() < 30


def test_truncated_jpeg_is_an_image_load_error_naming_the_file(tmp_path, cat_jpeg):
    content = cat_jpeg.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, InputError)


def test_text_file_is_an_image_load_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="notes.png"):
        load_image(path)


def test_missing_path_is_an_image_load_error(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "missing.jpg" in str(info.value)
    assert "no such file" in str(info.value)


def test_decompression_bomb_is_refused(monkeypatch, cat_png):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(ImageLoadError) as info:
        load_image(cat_png)
    assert "chelsea.png" in str(info.value)
    assert "100" in str(info.value)


# -- prepare_inputs -----------------------------------------------------------------
CONFIG = PreprocessConfig(input_size=(16, 24), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), interpolation="bilinear")


def hand_preprocess(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    height, width = config.input_size
    resized = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), np.float64) / 255.0
    mean = np.array(config.mean)[:, None, None]
    std = np.array(config.std)[:, None, None]
    return (resized.transpose(2, 0, 1) - mean) / std


def test_prepare_paths(cat_png, cat):
    batch, names = prepare_inputs([cat_png, str(cat_png)], CONFIG)
    assert batch.shape == (2, 3, 16, 24)
    assert batch.dtype == np.float32
    expected = hand_preprocess(Image.fromarray(cat), CONFIG)
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    np.testing.assert_allclose(batch[1], expected, atol=1e-5)
    assert names == ["chelsea", "chelsea_1"]


def test_prepare_single_path(cat_png):
    batch, names = prepare_inputs(cat_png, CONFIG)
    assert batch.shape == (1, 3, 16, 24)
    assert names == ["chelsea"]


def test_prepare_pil_images(cat):
    gray = Image.fromarray(cat).convert("L")
    batch, names = prepare_inputs([Image.fromarray(cat), gray], CONFIG)
    assert batch.shape == (2, 3, 16, 24)
    assert names == ["input0", "input1"]
    np.testing.assert_allclose(batch[0], hand_preprocess(Image.fromarray(cat), CONFIG), atol=1e-5)
    np.testing.assert_allclose(batch[1], hand_preprocess(gray, CONFIG), atol=1e-5)


def test_prepare_single_pil_image(cat):
    batch, names = prepare_inputs(Image.fromarray(cat), CONFIG)
    assert batch.shape == (1, 3, 16, 24)
    assert names == ["input0"]


def test_normalization_of_a_constant_image():
    image = Image.new("RGB", (5, 7), (255, 0, 51))  # 1.0, 0.0, 0.2
    batch, _ = prepare_inputs([image], CONFIG)
    expected = [(1.0 - 0.5) / 0.2, (0.0 - 0.4) / 0.25, (0.2 - 0.3) / 0.5]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(batch[0, channel], value, atol=1e-5)


def test_prepare_numpy_batch_passes_through():
    rng = np.random.default_rng(0)
    array = rng.standard_normal((2, 3, 16, 24))  # float64, normalized, at the model's size
    batch, names = prepare_inputs(array, CONFIG)
    assert batch.shape == (2, 3, 16, 24)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(batch, array.astype(np.float32))
    assert names == ["input0", "input1"]


def test_prepare_torch_tensor():
    tensor = torch.linspace(-1, 1, 2 * 3 * 16 * 24).reshape(2, 3, 16, 24).requires_grad_(True)
    batch, names = prepare_inputs(tensor, CONFIG)
    assert isinstance(batch, np.ndarray)
    assert batch.shape == (2, 3, 16, 24)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, tensor.detach().numpy())
    assert names == ["input0", "input1"]


def test_prepare_single_chw_array_gets_one_name():
    """A (3, H, W) array is accepted as a batch of one; it must get one name."""
    batch, names = prepare_inputs(np.zeros((3, 16, 24), np.float32), CONFIG)
    assert batch.shape == (1, 3, 16, 24)
    assert len(names) == len(batch), f"one name per input expected, got {names} for a batch of {len(batch)}"


@pytest.mark.parametrize("shape", [(1, 2, 3, 8, 8), (2, 5, 8, 8), (7, 5, 6), (8,)])
def test_wrong_shapes_are_input_errors(shape):
    with pytest.raises(InputError, match="shape"):
        prepare_inputs(np.zeros(shape, np.float32), CONFIG)


def test_normalized_input_of_the_wrong_size_is_refused_naming_the_size():
    for normalized in (None, True):
        with pytest.raises(InputError, match="16x24") as info:
            prepare_inputs(np.zeros((2, 3, 8, 8), np.float32), CONFIG, normalized=normalized)
        assert "normalized=False" in str(info.value)  # says how to have pixels resized


def test_a_declared_normalized_input_must_be_a_float_model_batch(cat, cat_png):
    with pytest.raises(InputError, match="uint8 pixels"):
        prepare_inputs(cat, CONFIG, normalized=True)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        prepare_inputs(np.zeros((16, 24, 3), np.float32), CONFIG, normalized=True)
    with pytest.raises(InputError, match="raw pixels"):
        prepare_inputs([cat_png], CONFIG, normalized=True)
    with pytest.raises(InputError, match="True, False or None"):
        prepare_inputs(np.zeros((1, 3, 16, 24), np.float32), CONFIG, normalized="yes")


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.uint16])
def test_integer_arrays_other_than_uint8_are_input_errors(dtype):
    with pytest.raises(InputError, match="uint8 pixels"):
        prepare_inputs(np.zeros((1, 3, 8, 8), dtype), CONFIG)


def test_integer_tensor_other_than_uint8_is_input_error():
    with pytest.raises(InputError, match="int64"):
        prepare_inputs(torch.zeros(1, 3, 8, 8, dtype=torch.int64), CONFIG)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_input_errors(bad):
    array = np.zeros((1, 3, 16, 24), np.float32)
    array[0, 1, 2, 3] = bad
    with pytest.raises(InputError, match="NaN"):
        prepare_inputs(array, CONFIG)
    with pytest.raises(InputError, match="NaN"):
        prepare_inputs(array, CONFIG, normalized=False)


# -- raw pixel arrays ------------------------------------------------------------------
def test_uint8_arrays_in_every_layout_match_the_pil_image_exactly(cat):
    expected, _ = prepare_inputs(Image.fromarray(cat), CONFIG)
    chw = np.ascontiguousarray(cat.transpose(2, 0, 1))
    for form in (cat, [cat], cat[None], chw, torch.from_numpy(chw), torch.from_numpy(chw)[None], [torch.from_numpy(chw)]):
        batch, names = prepare_inputs(form, CONFIG)
        np.testing.assert_array_equal(batch, expected)
        assert names == ["input0"]
    stacked, names = prepare_inputs(np.stack([cat, cat[::-1]]), CONFIG)
    flipped, _ = prepare_inputs(Image.fromarray(np.ascontiguousarray(cat[::-1])), CONFIG)
    np.testing.assert_array_equal(stacked, np.concatenate([expected, flipped]))
    assert names == ["input0", "input1"]


def test_grey_and_rgba_uint8_arrays_are_converted_like_files(cat):
    grey = np.asarray(Image.fromarray(cat).convert("L"))
    for form in (grey, grey[..., None], grey[None]):
        batch, _ = prepare_inputs([form], CONFIG)
        np.testing.assert_allclose(batch[0], hand_preprocess(Image.fromarray(grey), CONFIG), atol=1e-5)
    rgba = np.dstack([cat, np.zeros(cat.shape[:2], np.uint8)])  # fully transparent: white
    batch, _ = prepare_inputs(rgba, CONFIG)
    expected = [(1.0 - m) / s for m, s in zip(CONFIG.mean, CONFIG.std)]
    np.testing.assert_allclose(batch[0].reshape(3, -1).mean(axis=1), expected, atol=1e-5)


def test_float_pixels_are_resized_like_the_uint8_they_came_from(cat):
    expected, _ = prepare_inputs(cat, CONFIG)
    as_float = cat.astype(np.float32) / 255.0
    chw = torch.from_numpy(as_float.transpose(2, 0, 1).copy())
    for form in (chw, chw[None], chw.numpy().astype(np.float64)):
        batch, _ = prepare_inputs(form, CONFIG, normalized=False)
        np.testing.assert_allclose(batch, expected, atol=1e-6)
    # a float (H, W, 3) array cannot be a model input: pixels without being told
    batch, _ = prepare_inputs(as_float, CONFIG)
    np.testing.assert_allclose(batch, expected, atol=1e-6)


def test_float_pixels_at_the_models_size_are_used_exactly():
    pixels = np.random.default_rng(3).random((2, 3, 16, 24))  # not 8-bit values
    batch, _ = prepare_inputs(pixels, CONFIG, normalized=False)
    mean = np.array(CONFIG.mean)[:, None, None]
    std = np.array(CONFIG.std)[:, None, None]
    np.testing.assert_allclose(batch, (pixels - mean) / std, atol=1e-5)


def test_float_pixels_outside_0_1_are_refused():
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        prepare_inputs(np.full((1, 3, 16, 24), 2.0, np.float32), CONFIG, normalized=False)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        prepare_inputs(np.full((10, 12, 3), 255.0, np.float32), CONFIG)  # floats in 0-255
    with pytest.raises(InputError, match="input 1"):
        prepare_inputs([np.zeros((10, 12, 3), np.float32), np.full((10, 12, 3), -0.5, np.float32)], CONFIG)


def test_an_undeclared_unit_range_float_batch_warns_how_to_declare_it():
    pixels = np.random.default_rng(4).random((1, 3, 16, 24)).astype(np.float32)
    with pytest.warns(cnnviz_core.MethodWarning, match="normalized=False") as caught:
        batch, _ = prepare_inputs(pixels, CONFIG)
    assert "normalized=True" in str(caught[0].message)
    np.testing.assert_array_equal(batch, pixels)  # still taken as normalized (compatibility)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_inputs(pixels, CONFIG, normalized=True)  # declared: silent
        prepare_inputs(pixels * 2 - 1, CONFIG)  # negative values: not [0, 1] pixels
        prepare_inputs(np.zeros_like(pixels), CONFIG)  # a constant batch (the mean image) says nothing
        identity = PreprocessConfig(input_size=(16, 24), mean=(0, 0, 0), std=(1, 1, 1))
        prepare_inputs(pixels, identity)  # normalization leaves [0, 1] where it is: nothing to confuse


# -- normalized batches that say so ---------------------------------------------------------
def test_a_prepared_batch_declares_itself_normalized(cat):
    batch, _ = prepare_inputs(cat, CONFIG)
    assert isinstance(batch, NormalizedBatch) and batch.config == CONFIG
    part = batch[:1]
    assert isinstance(part, NormalizedBatch) and part.config == CONFIG
    assert type(batch + 1) is np.ndarray and type(np.concatenate([batch, batch])) is np.ndarray
    restored = pickle.loads(pickle.dumps(batch))
    assert isinstance(restored, NormalizedBatch) and restored.config == CONFIG
    np.testing.assert_array_equal(restored, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = prepare_inputs(part, CONFIG)
    np.testing.assert_array_equal(again, part)
    with pytest.raises(InputError, match="drop normalized=False"):
        prepare_inputs(batch, CONFIG, normalized=False)
    other = PreprocessConfig(input_size=(16, 24))  # ImageNet mean and std
    with pytest.raises(InputError, match="normalized for another model"):
        prepare_inputs(batch, other)


def test_unsupported_items_are_input_errors():
    with pytest.raises(InputError):
        prepare_inputs([42], CONFIG)
    with pytest.raises(InputError):
        prepare_inputs(3.5, CONFIG)
    with pytest.raises(InputError, match="no inputs"):
        prepare_inputs([], CONFIG)


def test_bad_path_in_list_is_image_load_error(tmp_path, cat_png):
    with pytest.raises(ImageLoadError, match="nothere"):
        prepare_inputs([cat_png, tmp_path / "nothere.png"], CONFIG)


def test_duplicate_stems_get_unique_names(tmp_path, cat):
    paths = []
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "photo.png"
        Image.fromarray(cat).save(path)
        paths.append(path)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(cat).save(jpeg)
    _, names = prepare_inputs(paths + [jpeg], CONFIG)
    assert len(set(names)) == 4
    assert names[0] == "photo"
    assert all(name.startswith("photo") for name in names)


def test_unique_names_never_collide_with_an_existing_stem(tmp_path, cat):
    """a/photo.png, b/photo.png and photo_1.png: the second must not be renamed
    to "photo_1", which the third already is (their outputs would overwrite)."""
    paths = []
    for folder, stem in (("a", "photo"), ("b", "photo"), ("c", "photo_1")):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / f"{stem}.png")
        Image.fromarray(cat).save(paths[-1])
    _, names = prepare_inputs(paths, CONFIG)
    assert len(set(names)) == 3, f"duplicate output names {names}"
    assert len(set(unique_names(["a", "a", "a_1"]))) == 3


# -- scikit-image's samples by name ----------------------------------------------------------
def test_a_sample_by_name_is_the_photograph_named_after_it(cat):
    batch, names = prepare_inputs(["skimage:chelsea", "skimage:camera"], CONFIG)
    assert names == ["chelsea", "camera"]
    np.testing.assert_allclose(batch[0], hand_preprocess(Image.fromarray(skdata.chelsea()), CONFIG), atol=1e-5)
    np.testing.assert_allclose(batch[1], hand_preprocess(Image.fromarray(skdata.camera()), CONFIG), atol=1e-5)
    assert images.open_image("skimage:horse").mode == "RGB"  # a boolean sample
    assert images.source_name("skimage:coffee") == "coffee" and images.source_name("/a/b/cat.jpg") == "cat"


def test_an_unknown_sample_lists_the_available_ones():
    with pytest.raises(InputError, match="not a bundled scikit-image sample") as info:
        prepare_inputs("skimage:mona_lisa", CONFIG)
    assert "chelsea" in str(info.value) and "coffee" in str(info.value)


def test_a_sample_without_scikit_image_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import fails as if not installed
    with pytest.raises(InputError, match="pip install scikit-image"):
        images.load_sample("chelsea")


def test_every_listed_sample_loads_offline():
    for name in images.SAMPLE_NAMES:
        image = images.load_sample(name)
        assert image.mode == "RGB" and min(image.size) >= 100, name


def test_one_image_array_in_any_form_becomes_the_same_pil_image(cat):
    """pil_image is how a plugin (style_transfer's style) reads an array or tensor."""
    chw = np.ascontiguousarray(cat.transpose(2, 0, 1))
    for form in (cat, chw, torch.from_numpy(chw), torch.from_numpy(chw)[None], torch.from_numpy(chw).float() / 255):
        np.testing.assert_array_equal(np.asarray(images.pil_image(form)), cat)
    with pytest.raises(InputError, match="holds 2 images"):
        images.pil_image(np.stack([cat, cat]))
    with pytest.raises(InputError, match="floats in"):
        images.pil_image(cat.astype(np.float32))  # 0-255 floats
