"""The math of the sanity, robustness, localization and complexity metrics,
checked on inputs small enough to compute by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from cnnviz_core import InputError
from cnnviz_plugins.evaluation.support import complexity_math, localization_math, rank_similarity, regions


# -- rank correlation and SSIM -------------------------------------------------------
def test_spearman_by_hand():
    # ranks equal the values; d = (0, 1, 1, 0): 1 - 6·2 / (4·15) = 0.8
    assert rank_similarity.spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    # ties share their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4) → 4.5 / sqrt(4.5 · 5)
    assert rank_similarity.spearman(np.array([1, 1, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(3 / math.sqrt(10))
    # reversed order → -1; by magnitude a sign flip changes nothing
    assert rank_similarity.spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)
    assert rank_similarity.spearman(np.array([-4, 1, 2, 3]), np.array([4, 1, 2, 3]), absolute=True) == pytest.approx(1.0)
    assert math.isnan(rank_similarity.spearman(np.ones(4), np.arange(4.0)))


def test_ssim_by_hand_on_one_window():
    # a 7 x 7 one-hot map against its inversion: one window, mean m = 1/49,
    # sample variance v = 1/49, covariance -v
    x = np.zeros((7, 7))
    x[3, 3] = 5.0
    m, v, c1, c2 = 1 / 49, 1 / 49, 0.01 ** 2, 0.03 ** 2
    expected = (2 * m * (1 - m) + c1) * (-2 * v + c2) / ((m * m + (1 - m) ** 2 + c1) * (2 * v + c2))
    assert rank_similarity.ssim(x, -x) == pytest.approx(expected, rel=1e-12)
    assert rank_similarity.ssim(x, 3 * x + 2) == pytest.approx(1.0)  # scale and offset do not matter


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 24))
    b = a + rng.normal(size=a.shape)
    expected = structural_similarity(rank_similarity.unit_scaled(a), rank_similarity.unit_scaled(b), data_range=1.0)
    assert rank_similarity.ssim(a, b) == pytest.approx(expected, abs=1e-12)


# -- sparseness and complexity ----------------------------------------------------------
@pytest.mark.parametrize("size", [4, 224 * 224])
def test_gini_extremes_are_exact(size):
    one_hot = np.zeros(size)
    one_hot[size // 3] = -7.3
    assert complexity_math.gini(one_hot) == 1.0
    assert complexity_math.gini(np.full(size, 0.37)) == 0.0
    assert complexity_math.entropy(one_hot) == 0.0
    assert complexity_math.entropy(np.full(size, 0.37)) == pytest.approx(math.log(size), abs=1e-9)


def test_gini_and_entropy_by_hand():
    # sorted (0, 0, 1, 1): Σ (2k - 5) a_k = 1 + 3 = 4, over (n - 1) Σ a = 6
    assert complexity_math.gini(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(2 / 3)
    # p = (1/4, 1/4, 1/2): H = 1.5 ln 2, signs ignored
    assert complexity_math.entropy(np.array([-1.0, 1.0, 2.0])) == pytest.approx(1.5 * math.log(2))
    assert complexity_math.gini(np.zeros(9)) == 0.0 and complexity_math.entropy(np.zeros(9)) == pytest.approx(math.log(9))
    with pytest.raises(ValueError, match="NaN"):
        complexity_math.gini(np.array([1.0, np.nan]))


# -- localization -----------------------------------------------------------------------------
def top_left_region() -> np.ndarray:
    region = np.zeros((4, 4), dtype=bool)
    region[:2, :2] = True
    return region


def test_pointing_game_hit_miss_and_tolerance():
    region = top_left_region()
    saliency = np.zeros((4, 4))
    saliency[1, 1] = 1.0
    assert localization_math.pointing_hit(saliency, region)
    saliency = np.zeros((4, 4))
    saliency[3, 3] = 1.0  # sqrt(8) ≈ 2.83 pixels from (1, 1)
    assert not localization_math.pointing_hit(saliency, region)
    assert localization_math.pointing_hit(saliency, region, tolerance=3)
    assert not localization_math.pointing_hit(saliency, region, tolerance=2.8)
    with pytest.raises(ValueError, match="empty"):
        localization_math.pointing_hit(saliency, np.zeros((4, 4), dtype=bool))


def test_energy_mass_and_rank_by_hand():
    top_row = np.array([[True, True], [False, False]])
    # scaled to [0, 1]: (0, 1/3, 2/3, 1), sum 2, top row 1/3
    assert localization_math.energy_share(np.array([[0.0, 1.0], [2.0, 3.0]]), top_row) == pytest.approx(1 / 6)
    assert math.isnan(localization_math.energy_share(np.ones((2, 2)), top_row))
    # positive relevance (0, 2, 1, 1): 2 of 4 inside
    assert localization_math.relevance_mass(np.array([[-1.0, 2.0], [1.0, 1.0]]), top_row) == pytest.approx(0.5)
    assert localization_math.relevance_mass(-np.ones((2, 2)), top_row) == 0.0
    right_column = np.array([[False, True], [False, True]])
    # K = 2: the two highest are 5 (inside) and 4 (outside)
    assert localization_math.relevance_rank(np.array([[1.0, 5.0], [4.0, 3.0]]), right_column) == pytest.approx(0.5)
    assert localization_math.relevance_rank(np.array([[5.0, 1.0], [4.0, 3.0]]), right_column) == 0.0


# -- regions: boxes and masks at the model's input geometry ------------------------------------------
def test_boxes_scale_to_the_input_by_pixel_centres():
    # a 4 x 4 image at 2 x 2: input centres fall at 1 and 3 original pixels
    assert regions.boxes_mask([[0, 0, 2, 2]], (4, 4), (2, 2)).tolist() == [[True, False], [False, False]]
    # x in [1, 3) of a 4-wide image, read at 8 columns: centres 0.25, 0.75, ... → columns 2..5
    row = regions.boxes_mask([[1, 0, 3, 1]], (1, 4), (1, 8))[0]
    assert np.flatnonzero(row).tolist() == [2, 3, 4, 5]
    # non-square image: the right half of a 100 x 200 image, top half → rows 0-4, columns 5-9 of 10 x 10
    region = regions.boxes_mask([[100, 0, 200, 50]], (100, 200), (10, 10))
    assert region.sum() == 25 and region[:5, 5:].all()
    # two boxes: their union
    assert regions.boxes_mask([[0, 0, 1, 1], [3, 3, 4, 4]], (4, 4), (4, 4)).sum() == 2
    with pytest.raises(InputError, match="four numbers"):
        regions.boxes_mask([[0, 0, "right", 1]], (4, 4), (4, 4))
    with pytest.raises(InputError, match="x1 > x0"):
        regions.boxes_mask([[2, 0, 1, 1]], (4, 4), (4, 4))


def test_image_regions_from_json_masks_and_exif(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "wide.png")
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[:10, 20:] = 255  # top-right quarter
    Image.fromarray(mask).save(tmp_path / "wide.mask.png")
    from_mask = regions.image_regions([str(tmp_path / "wide.png")], (4, 4))
    assert from_mask[0].tolist() == [[False, False, True, True]] * 2 + [[False] * 4] * 2

    # a JPEG stored 40 wide and 20 tall, turned a quarter by EXIF: cnnviz reads it 20 x 40 upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(tmp_path / "turned.jpg", exif=exif)
    (tmp_path / "boxes.json").write_text(json.dumps({"turned.jpg": [[0, 0, 10, 20]], "wide.png": [[0, 0, 40, 20]]}))
    table = regions.read_boxes(str(tmp_path / "boxes.json"))
    both = regions.image_regions([str(tmp_path / "turned.jpg"), str(tmp_path / "wide.png")], (4, 4),
                                 str(tmp_path / "boxes.json"))
    expected = np.zeros((4, 4), dtype=bool)
    expected[:2, :2] = True  # left half of the width, top half of the height
    assert both[0].tolist() == expected.tolist() and both[1].all()

    (tmp_path / "bare.png").write_bytes((tmp_path / "wide.png").read_bytes())
    with pytest.raises(InputError, match="bare.mask.png"):
        regions.image_regions([str(tmp_path / "bare.png")], (4, 4))
    with pytest.raises(InputError, match="no entry for 'bare.png'"):
        regions.image_regions([str(tmp_path / "bare.png")], (4, 4), boxes=table)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "bare.mask.png").write_bytes((tmp_path / "wide.mask.png").read_bytes())
    assert regions.image_regions([str(tmp_path / "bare.png")], (4, 4), str(masks)).tolist() == from_mask.tolist()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        regions.read_boxes(str(tmp_path / "bad.json"))
