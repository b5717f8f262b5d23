"""Rendering raw arrays to images, and atomic file writes."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from cnnviz_core import atomic, render


# -- render ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, 5.0, -3.0])
def test_scale_unit_constant_map_is_zeros(value):
    out = render.scale_unit(np.full((4, 5), value))
    assert out.shape == (4, 5)
    assert out.dtype == np.float32
    assert not out.any()


def test_scale_unit_spans_zero_to_one():
    out = render.scale_unit(np.array([[-2.0, 0.0], [2.0, 6.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])


def test_scale_unit_non_finite_gives_zeros():
    out = render.scale_unit(np.array([1.0, np.nan, 3.0]))
    assert np.isfinite(out).all()


def test_heatmap_shape_and_dtype():
    out = render.heatmap(np.random.default_rng(0).standard_normal((6, 7)))
    assert out.shape == (6, 7, 3)
    assert out.dtype == np.uint8


def test_overlay_shape_dtype_and_alpha():
    image = np.full((3, 6, 7), 0.5, np.float32)
    values = np.arange(42, dtype=np.float32).reshape(6, 7)
    out = render.overlay(image, values)
    assert out.shape == (6, 7, 3)
    assert out.dtype == np.uint8
    # alpha = 0 shows the image alone, alpha = 1 the heatmap alone.
    np.testing.assert_array_equal(render.overlay(image, values, alpha=0.0), np.full((6, 7, 3), 128, np.uint8))
    np.testing.assert_array_equal(render.overlay(image, values, alpha=1.0), render.heatmap(values))


def test_colormap_dark_at_zero_bright_at_one():
    ends = render.colormap(np.array([0.0, 1.0]))
    assert ends.shape == (2, 3)
    dark, bright = ends
    assert not np.allclose(dark, bright)
    assert dark.sum() < 0.1
    assert bright.sum() > 2.0


def test_colormap_brightness_increases():
    ramp = render.colormap(np.linspace(0, 1, 50))
    luminance = ramp @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(luminance) > 0).all()


def test_colormap_clips_out_of_range():
    np.testing.assert_allclose(render.colormap(np.array([-1.0, 2.0])), render.colormap(np.array([0.0, 1.0])))


def test_heatmap_extremes_use_colormap_endpoints():
    out = render.heatmap(np.array([[0.0, 10.0]]))
    assert out[0, 0].sum() < out[0, 1].sum()
    np.testing.assert_array_equal(out[0, 0], render.to_uint8(render.colormap(np.array(0.0))))


def test_gradient_image_zero_is_mid_grey():
    out = render.gradient_image(np.zeros((3, 4, 5)))
    assert out.shape == (4, 5, 3)
    assert out.dtype == np.uint8
    assert (out == 128).all()


def test_gradient_image_signs():
    values = np.zeros((3, 4, 4), np.float32)
    values[:, 0, 0] = 1.0
    values[:, 0, 1] = -1.0
    out = render.gradient_image(values, percentile=100)
    assert (out[0, 0] == 255).all()
    assert (out[0, 1] == 0).all()
    assert (out[1, 1] == 128).all()


def test_tile_layout_size():
    item = np.zeros((5, 7, 3), np.uint8)
    canvas = render.tile([[item, item, item], [item]], gap=2)
    assert canvas.shape == (2 * 5 + 2, 3 * 7 + 2 * 2, 3)
    assert canvas.dtype == np.uint8
    # gaps and the missing cell stay white; tiles are placed.
    assert (canvas[5:7] == 255).all()
    assert (canvas[7:, 9:] == 255).all()
    assert (canvas[:5, :7] == 0).all()
    assert (canvas[7:, :7] == 0).all()


def test_png_bytes_round_trip():
    rgb = render.heatmap(np.arange(12.0).reshape(3, 4))
    decoded = np.asarray(Image.open(io.BytesIO(render.png_bytes(rgb))))
    np.testing.assert_array_equal(decoded, rgb)


# -- atomic -----------------------------------------------------------------------------
def test_write_bytes_creates_file_and_folders(tmp_path):
    path = tmp_path / "sub" / "dir" / "out.bin"
    atomic.write_bytes(path, b"hello")
    assert path.read_bytes() == b"hello"
    assert os.listdir(path.parent) == ["out.bin"]


def test_failed_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.png"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic.atomic_open(path) as stream:
            stream.write(b"partial data")
            raise RuntimeError("crash midway")
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_content(tmp_path):
    path = tmp_path / "record.json"
    path.write_bytes(b"old content")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(path) as stream:
            stream.write(b"new, half-written")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["record.json"]


def test_successful_write_replaces_old_content(tmp_path):
    path = tmp_path / "record.txt"
    path.write_text("old")
    atomic.write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(tmp_path) == ["record.txt"]


def test_write_json_handles_numpy(tmp_path):
    path = tmp_path / "record.json"
    record = {
        "float": np.float32(0.5),
        "int": np.int64(7),
        "bool": np.bool_(True),
        "array": np.arange(3, dtype=np.int16),
        "matrix": np.eye(2, dtype=np.float32),
        "tuple": (1, 2),
    }
    atomic.write_json(path, record)
    loaded = json.loads(path.read_text())
    assert loaded == {
        "float": 0.5,
        "int": 7,
        "bool": True,
        "array": [0, 1, 2],
        "matrix": [[1.0, 0.0], [0.0, 1.0]],
        "tuple": [1, 2],
    }
    assert isinstance(loaded["int"], int)


def test_write_npy_round_trip(tmp_path):
    path = tmp_path / "maps.npy"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    atomic.write_npy(path, array)
    loaded = np.load(path)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == np.float32
