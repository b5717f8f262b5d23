"""Localization metrics on a synthetic photo with a known object: a bright
square on a dark background, its box given in the original image's pixels
(a JSON of boxes, or a mask PNG beside the image), carried through cnnviz's
own preprocessing to the model's input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import cnnviz_core
from cnnviz_core import InputError, MetricBatch
from cnnviz_plugins.evaluation.energy_pointing_game import EnergyPointingGame
from cnnviz_plugins.evaluation.pointing_game import PointingGame
from cnnviz_plugins.evaluation.relevance_mass import RelevanceMass
from cnnviz_plugins.evaluation.relevance_rank import RelevanceRank

from conftest import small_torch_adapter

# 128 wide, 64 tall; the model reads 32 x 32, so x shrinks by 4 and y by 2:
# the square x in [32, 64), y in [16, 48) lands on columns 8-15, rows 8-23.
BOX = [32, 16, 64, 48]


@pytest.fixture
def square(tmp_path):
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[16:48, 32:64] = 255
    path = tmp_path / "square.png"
    Image.fromarray(pixels).save(path)
    (tmp_path / "boxes.json").write_text(json.dumps({"square.png": [BOX]}))
    mask = np.zeros((64, 128), dtype=np.uint8)
    mask[16:48, 32:64] = 1
    Image.fromarray(mask).save(tmp_path / "square.mask.png")
    return str(path), str(tmp_path / "boxes.json")


def batch_of(adapter, path, maps, annotations) -> MetricBatch:
    inputs = cnnviz_core.preprocess(adapter, [path])
    return MetricBatch(inputs=np.asarray(inputs), maps=maps, classes=np.zeros(1, dtype=np.int64), names=["square"],
                       method="m", explain=lambda x, c: None, sources=[path], annotations=annotations)


def brightness(adapter, path) -> np.ndarray:
    """A map that peaks on the bright square: the image's own brightness at the model's input."""
    return adapter.display_images(np.asarray(cnnviz_core.preprocess(adapter, [path]))).mean(axis=1)


def metric(cls, adapter, **params):
    return cls(adapter, cls.make_params(**params))


def test_box_and_mask_give_the_region_at_the_model_input(square):
    path, boxes = square
    adapter = small_torch_adapter()
    maps = brightness(adapter, path)
    from_boxes = metric(RelevanceRank, adapter).regions(batch_of(adapter, path, maps, boxes))
    from_mask = metric(RelevanceRank, adapter).regions(batch_of(adapter, path, maps, None))
    expected = np.zeros((32, 32), dtype=bool)
    expected[8:24, 8:16] = True
    assert from_boxes[0].tolist() == expected.tolist() and from_mask[0].tolist() == expected.tolist()


def test_a_map_on_the_square_hits_and_one_elsewhere_misses(square):
    path, boxes = square
    adapter = small_torch_adapter()
    on = brightness(adapter, path)
    off = 1.0 - on  # peaks on the dark background
    scores = {}
    for cls in (PointingGame, EnergyPointingGame, RelevanceMass, RelevanceRank):
        scores[cls.name] = [metric(cls, adapter).evaluate(batch_of(adapter, path, m, boxes)).scores[0] for m in (on, off)]
    assert scores["pointing_game"] == [1.0, 0.0]
    assert scores["relevance_rank"][0] == 1.0 and scores["relevance_rank"][1] < 0.2
    # 128 of 1024 pixels are the object: a map spread evenly would put 1/8 there
    assert scores["relevance_mass"][0] > 0.9 and scores["relevance_mass"][1] < 0.125
    assert scores["energy_pointing_game"][0] > 0.9 and scores["energy_pointing_game"][1] < 0.125
    # the miss becomes a hit with enough tolerance: the background peak is the top-left pixel
    far = metric(PointingGame, adapter, tolerance=11.4).evaluate(batch_of(adapter, path, off, boxes)).scores[0]
    near = metric(PointingGame, adapter, tolerance=11.3).evaluate(batch_of(adapter, path, off, boxes)).scores[0]
    assert (far, near) == (1.0, 0.0)  # (0, 0) to (8, 8): sqrt(128) ≈ 11.31 pixels


def test_inputs_without_files_or_annotations_are_refused(square):
    path, boxes = square
    adapter = small_torch_adapter()
    maps = brightness(adapter, path)
    nameless = batch_of(adapter, path, maps, boxes)
    nameless.sources = []
    with pytest.raises(InputError, match="need image files"):
        metric(PointingGame, adapter).evaluate(nameless)
    elsewhere = batch_of(adapter, path, maps, boxes)
    elsewhere.annotations = str(square[1]).replace("boxes.json", "missing.json")
    with pytest.raises(InputError, match="cannot read the boxes file"):
        metric(RelevanceMass, adapter).evaluate(elsewhere)


def test_a_dataset_folder_leaves_the_masks_beside_its_images_out(square):
    path, _ = square
    dataset = cnnviz_core.Dataset.from_spec(os.path.dirname(path))
    assert len(dataset) == 1 and dataset.entry(0)[0] == path
