"""Where the object is, for the localization metrics: boxes or masks given
with a dataset, read and carried to the model's input geometry.

Two formats (the README's Evaluate section shows them):

- a JSON file of boxes per image, ``{"image.jpg": [[x0, y0, x1, y1], ...]}``:
  keys are image file names (the base name, or the path as given), boxes in
  the original image's pixels (upright: EXIF orientation applied, as cnnviz
  reads the image), ``x`` to the right and ``y`` down from the
  top-left corner of the image, edges as continuous coordinates (a box
  ``[0, 0, 2, 1]`` covers the two top-left pixels). An image's region is the
  union of its boxes.
- a mask PNG per image, ``NAME.mask.png`` for ``NAME.jpg`` (any
  extension), beside the image or in a folder given instead of the JSON:
  non-zero pixels are the object (a dataset folder does not take
  ``*.mask.png`` files for images).

cnnviz preprocesses an image by resizing it whole to the model's input size
(no crop, :func:`cnnviz_core.images.resize`), so a box maps by scaling each
axis: input pixel (r, c) is inside when its centre, carried back to the
original image — ``((c + 0.5) · W / w, (r + 0.5) · H / h)`` — lies inside
the box. A mask is resized to the input size with nearest-neighbour sampling,
which asks the same question of each input pixel's centre.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from cnnviz_core import InputError, images

MASK_SUFFIX = ".mask.png"
ORIENTATION_TAG = 0x0112  # EXIF orientation; 5-8 turn the image a quarter


def boxes_mask(boxes: Sequence[Sequence[float]], original_size: tuple[int, int],
               input_size: tuple[int, int]) -> np.ndarray:
    """(h, w) boolean region of the union of ``boxes`` given in an image of
    ``original_size`` (H, W), at ``input_size`` (h, w)."""
    height, width = original_size
    rows, cols = input_size
    ys = (np.arange(rows) + 0.5) * height / rows
    xs = (np.arange(cols) + 0.5) * width / cols
    region = np.zeros((rows, cols), dtype=bool)
    for box in boxes:
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise InputError(f"a box is four numbers [x0, y0, x1, y1], got {box!r}") from None
        if not (x1 > x0 and y1 > y0):
            raise InputError(f"a box [x0, y0, x1, y1] needs x1 > x0 and y1 > y0, got {list(box)}")
        region |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return region


def mask_at_size(mask: Image.Image, input_size: tuple[int, int]) -> np.ndarray:
    rows, cols = input_size
    return np.asarray(mask.convert("L").resize((cols, rows), Image.Resampling.NEAREST)) > 0


def mask_path(image_path: str) -> str:
    stem, _ = os.path.splitext(image_path)
    return stem + MASK_SUFFIX


def upright_size(path: str) -> tuple[int, int]:
    """(H, W) of an image as cnnviz reads it: EXIF orientation applied (a
    quarter turn swaps the sides), without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {error}") from None
    return (width, height) if turned else (height, width)


def read_boxes(path: str) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except OSError as error:
        raise InputError(f"cannot read the boxes file {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"the boxes file {path} is not valid JSON ({error}); give "
                         '{"image.jpg": [[x0, y0, x1, y1], ...]}') from None
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise InputError(f"the boxes file {path} must map image file names to lists of [x0, y0, x1, y1] boxes")
    return table


def image_regions(sources: Sequence[str | None], input_size: tuple[int, int], annotations: str | None = None,
                  boxes: Mapping[str, list] | None = None) -> np.ndarray:
    """(B, h, w) boolean regions for image files. ``annotations``: a JSON
    file of boxes, a folder of ``NAME.mask.png`` masks, or None for masks
    beside the images; ``boxes``: the JSON's table when read already. An
    image with no region is an InputError naming the ways to give one."""
    if boxes is None and annotations is not None and not os.path.isdir(annotations):
        boxes = read_boxes(annotations)
    regions = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)) or images.is_sample(source):
            raise InputError(f"localization metrics need image files with boxes or masks; {source!r} is not a file "
                             "(give --image FILE or --dataset DIR, with a boxes JSON or NAME.mask.png masks)")
        source = os.fspath(source)
        name = os.path.basename(source)
        if boxes is not None:
            found = boxes.get(source, boxes.get(name))
            if found is None:
                raise InputError(f"the boxes file has no entry for {name!r}; add one "
                                 f"({{\"{name}\": [[x0, y0, x1, y1]]}})")
            regions.append(boxes_mask(found, upright_size(source), input_size))
            continue
        path = mask_path(source) if annotations is None else os.path.join(annotations, os.path.basename(mask_path(source)))
        if not os.path.exists(path):
            raise InputError(f"no box or mask for {source}: put a mask at {path} (non-zero on the object) "
                             "or give a JSON file of boxes")
        try:
            with Image.open(path) as mask:
                regions.append(mask_at_size(mask, input_size))
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(f"cannot read the mask {path}: {error}") from None
    return np.stack(regions)
