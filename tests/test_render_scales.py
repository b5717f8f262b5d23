"""How maps become colours: signed maps on a diverging scale centred at zero,
unsigned maps on a sequential one, every heatmap with a colour bar, gradient
images centred on grey."""

from __future__ import annotations

import numpy as np
import pytest

from cnnviz_core import render


def test_signed_map_is_symmetric_around_zero_and_zero_is_white():
    values = np.array([[-1.0, 0.0], [0.5, 2.0]], np.float32)
    scale = render.map_scale(values, percentile=100)
    assert scale.signed and scale.low == -2.0 and scale.high == 2.0
    colours = render.heatmap(values, scale)
    np.testing.assert_array_equal(colours[0, 1], [247, 247, 247])  # zero: the diverging map's white
    assert colours[0, 0, 2] > colours[0, 0, 0]  # negative: blue
    assert colours[1, 1, 0] > colours[1, 1, 2]  # positive: red


def test_unsigned_map_spans_min_to_percentile_and_marks_clipping():
    values = np.linspace(1.0, 2.0, 1000, dtype=np.float32).reshape(10, 100)
    values[0, 1] = 50.0  # one outlier
    scale = render.map_scale(values)
    assert not scale.signed and scale.low == 1.0 and scale.high < 3.0 and scale.clipped_high and not scale.clipped_low
    unit = scale.unit(values)
    assert unit.min() == 0.0 and unit.max() == 1.0


def test_constant_and_non_finite_maps_render():
    for values in (np.zeros((5, 6)), np.full((5, 6), np.nan), np.array([[1.0, np.inf], [2.0, 3.0]])):
        out = render.with_colorbar(render.heatmap(values), render.map_scale(values))
        assert out.dtype == np.uint8 and np.isfinite(out).all()


@pytest.mark.parametrize("width", [32, 224])
def test_colorbar_sits_under_the_picture_with_its_colours(width):
    values = np.tile(np.linspace(-3, 3, width, dtype=np.float32), (40, 1))
    scale = render.map_scale(values, percentile=100)
    picture = render.heatmap(values, scale)
    out = render.with_colorbar(picture, scale)
    assert out.shape[0] > 40 and out.shape[1] == max(width, render.COLORBAR_MIN_WIDTH)
    np.testing.assert_array_equal(out[:40, :width], picture)  # the picture itself is untouched
    bar_row = out[40 + 4 + 2]  # inside the bar
    left, right = bar_row[6], bar_row[out.shape[1] - 6]
    assert left[2] > left[0] and right[0] > right[2]  # blue end (negative) left, red end right
    labels = out[40 + 4 + 8 + 1 :]
    assert (labels < 128).any()  # the numbers are drawn


def test_signed_overlay_shows_the_photo_where_the_map_is_zero():
    image = np.full((3, 4, 4), 0.25, np.float32)
    values = np.zeros((4, 4), np.float32)
    values[0, 0], values[3, 3] = -1.0, 1.0
    out = render.overlay(image, values, alpha=0.5, scale=render.map_scale(values, percentile=100))
    np.testing.assert_array_equal(out[1, 1], [64, 64, 64])  # untouched photo pixel
    assert not np.array_equal(out[3, 3], [64, 64, 64])


def test_gradient_image_is_grey_at_zero_and_clips_at_the_percentile():
    values = np.zeros((3, 10, 10), np.float32)
    values[0, :5] = 1.0
    values[0, 0, 0] = 100.0  # beyond the 99th percentile: clipped, not the scale
    out = render.gradient_image(values)
    np.testing.assert_array_equal(out[9, 9], [128, 128, 128])
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 255


def test_attribution_heatmap_rendering_carries_a_colorbar_and_overlay_stays_aligned(tmp_path):
    from cnnviz_core.results import AttributionResult
    from cnnviz_core.targets import Target

    maps = np.random.default_rng(0).standard_normal((1, 48, 40)).astype(np.float32)
    result = AttributionResult("toy", {"name": "toy"}, {}, [Target("top1")], ["x"], None, maps, np.array([0]),
                               np.array([1.0], np.float32), display=np.full((1, 3, 48, 40), 0.5, np.float32))
    pictures = result.renderings(0)
    assert pictures["overlay"].shape == (48, 40, 3)
    assert pictures["heatmap"].shape[0] > 48 and pictures["heatmap"].shape[1] == render.COLORBAR_MIN_WIDTH
