"""Safe image loading and turning inputs into normalized model batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import cnnviz_core.images as images
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import ImageLoadError, InputError
from cnnviz_core.images import load_image, prepare_inputs, to_rgb, unique_names

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
    array = rng.standard_normal((2, 3, 8, 8))  # float64
    batch, names = prepare_inputs(array, CONFIG)
    assert batch.shape == (2, 3, 8, 8)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(batch, array.astype(np.float32))
    assert names == ["input0", "input1"]


def test_prepare_torch_tensor():
    tensor = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5).requires_grad_(True)
    batch, names = prepare_inputs(tensor, CONFIG)
    assert isinstance(batch, np.ndarray)
    assert batch.shape == (2, 3, 4, 5)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, tensor.detach().numpy())
    assert names == ["input0", "input1"]


def test_prepare_single_chw_array_gets_one_name():
    """A (3, H, W) array is accepted as a batch of one; it must get one name."""
    batch, names = prepare_inputs(np.zeros((3, 8, 8), np.float32), CONFIG)
    assert batch.shape == (1, 3, 8, 8)
    assert len(names) == len(batch), f"one name per input expected, got {names} for a batch of {len(batch)}"


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 8, 8, 3), (8, 8), (1, 2, 3, 8, 8)])
def test_wrong_shapes_are_input_errors(shape):
    with pytest.raises(InputError, match="shape"):
        prepare_inputs(np.zeros(shape, np.float32), CONFIG)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_integer_arrays_are_input_errors(dtype):
    with pytest.raises(InputError, match="floating"):
        prepare_inputs(np.zeros((1, 3, 8, 8), dtype), CONFIG)


def test_integer_tensor_is_input_error():
    with pytest.raises(InputError):
        prepare_inputs(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), CONFIG)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_input_errors(bad):
    array = np.zeros((1, 3, 8, 8), np.float32)
    array[0, 1, 2, 3] = bad
    with pytest.raises(InputError, match="NaN"):
        prepare_inputs(array, CONFIG)


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
