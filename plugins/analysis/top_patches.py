"""Maximally activating patches (Girshick et al. 2014; Zeiler & Fergus 2013)
as a cnnviz analysis: for each channel of a layer, the k dataset patches that
excite it most, each cropped to the receptive field of the unit that fired.

Per image and channel the unit taken is the channel's spatial maximum (first
position on ties), so an image appears at most once in a channel's list. A
streaming merge keeps the best k (image, position) pairs per channel — ties
broken by dataset order — in a bounded (C, k) state. The receptive field of
every position comes from the adapter (``receptive_field``), so a box is the
set of input pixels that can change that unit, clipped to the image.

Memory: besides the (C, k) arrays, crops are kept for the pictured channels
only (``max_grids`` × k tiles of ``tile``² pixels), cut from the batch's
pixels when an entry enters the top k. Keeping them, instead of re-reading
images at the end, works for one-shot iterators too and reads nothing twice."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, InputError, hookimpl, param, render

BLANK = 128  # letterbox colour around a tile


@dataclasses.dataclass
class TopPatchesParams(AnalysisParams):
    layer: str | None = param(None, "layer whose channels are examined (default: the model's last spatial feature layer)")
    channels: str = param("all", "channels to track: 'all', N (the first N), or a list and ranges such as '0,5,7' or '0-15'")
    top_k: int = param(9, "patches kept per channel (at most one per image)", minimum=1)
    tile: int = param(64, "side of each patch in the pictures, in pixels (crops are resized, keeping their aspect)", minimum=4)
    max_grids: int = param(16, "channels that get a picture (the first tracked ones); all tracked channels get arrays", minimum=0)
    overview_channels: int = param(8, "channels (rows) in the overview picture", minimum=0)


def parse_channels(spec: str, count: int | None) -> np.ndarray:
    """'all' → every channel; 'N' → the first N; '0,5,7' / '0-15' → those.
    With ``count`` None only the form is checked."""
    text = str(spec).strip().lower()
    if text in ("all", ""):
        return np.arange(count or 0)
    try:
        if text.isdigit():
            first = int(text)
            if first < 1:
                raise ValueError
            return np.arange(min(first, count if count is not None else first))
        chosen: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            chosen += range(int(low), int(high or low) + 1)
    except ValueError:
        raise InputError(f"top_patches: --channels {spec!r} is not 'all', a count, or a list such as '0,5,7' or '0-15'") from None
    outside = [c for c in chosen if c < 0 or (count is not None and c >= count)]
    if not chosen or outside:
        known = f"; the layer has channels 0-{count - 1}" if count is not None else ""
        raise InputError(f"top_patches: --channels {spec!r} names channel(s) {outside or 'none'}{known}")
    return np.array(sorted(set(chosen)))


def tile_image(pixels: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop (3, H, W) pixels in [0, 1] to box [y0, y1, x0, x1] and fit it in a
    size × size tile, aspect kept (edge boxes are clipped, so not square)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    tile = np.full((size, size, 3), BLANK, np.uint8)
    if y1 <= y0 or x1 <= x0:
        return tile
    crop = render.image_to_uint8(pixels[:, y0:y1, x0:x1])
    scale = size / max(y1 - y0, x1 - x0)
    height, width = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    # small crops are blown up pixel by pixel, so what the unit saw stays visible
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(crop).resize((width, height), resample))
    top, left = (size - height) // 2, (size - width) // 2
    tile[top : top + height, left : left + width] = resized
    return tile


class TopPatches(AnalysisMethod):
    """Top patches: for each channel of a layer, the dataset patches (receptive fields) that activate it most."""

    name = "top_patches"
    requires = frozenset({Capability.ACTIVATIONS})
    Params = TopPatchesParams
    batch_hint = 32
    state_attributes = ("values", "images", "positions", "names", "crops")
    demo_params = {"channels": "8", "top_k": 6}

    @classmethod
    def demo_settings(cls, adapter) -> dict:
        """The demo's layer: the middle stage output, whose receptive field is a
        fraction of the image, so patches are parts, not whole photos."""
        stages = adapter.stage_outputs()
        return {"layer": stages[len(stages) // 2]}

    @classmethod
    def check_params(cls, params) -> None:
        parse_channels(params.channels, None)  # a malformed list fails before any work

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.default_layer()
        self.adapter.check_layer(self.layer)
        self.geometry = self.adapter.receptive_field(self.layer)  # refuses a layer without (B, C, H, W) maps
        self.map_size = tuple(self.geometry.shape[2:])
        self.channels = parse_channels(self.params.channels, self.geometry.shape[1])
        count, k, pictured = len(self.channels), self.params.top_k, min(self.params.max_grids, len(self.channels))
        self.values = np.full((count, k), -np.inf, np.float32)
        self.images = np.full((count, k), -1, np.int64)  # dataset positions; -1: not filled yet
        self.positions = np.zeros((count, k), np.int64)  # flat y·w + x in the layer's map
        self.names = np.full((count, k), "", dtype=object)
        self.crops = np.full((pictured, k, self.params.tile, self.params.tile, 3), BLANK, np.uint8)

    def layers_needed(self) -> list[str]:
        return [self.layer]

    def consume(self, batch, activations, logits) -> None:
        maps = activations[self.layer][:, self.channels]
        flat = maps.reshape(len(maps), len(self.channels), -1)
        where = flat.argmax(axis=2)  # (b, C): each image's best position per channel
        best = np.take_along_axis(flat, where[..., None], axis=2)[..., 0].astype(np.float32)
        best = np.where(np.isnan(best), -np.inf, best)
        count, b, k = len(self.channels), len(maps), self.params.top_k
        values = np.concatenate([self.values, best.T], axis=1)
        images = np.concatenate([self.images, np.broadcast_to(batch.indices, (count, b))], axis=1)
        positions = np.concatenate([self.positions, where.T], axis=1)
        names = np.concatenate([self.names, np.broadcast_to(np.array(batch.names, dtype=object), (count, b))], axis=1)
        order = np.lexsort((images, -values), axis=1)[:, :k]  # highest value first, then dataset order
        self.crops = self._updated_crops(order, positions, batch.pixels)
        self.values, self.images, self.positions, self.names = (
            np.take_along_axis(a, order, axis=1) for a in (values, images, positions, names))

    def merge(self, state) -> None:
        """Another worker's lists (other images) folded in: the best k of both
        under the same order (value, then dataset position), which is the list
        one pass over all images keeps, since each image's entry per channel
        does not depend on the others. Tiles move with their entries."""
        if np.shape(state["values"]) != self.values.shape or np.shape(state["crops"]) != self.crops.shape:
            raise self.error("a partial state of other settings (channels, top_k, tile or max_grids) cannot be merged")
        k = self.params.top_k
        values, images, positions, names = (np.concatenate([getattr(self, name), state[name]], axis=1)
                                            for name in ("values", "images", "positions", "names"))
        order = np.lexsort((images, -values), axis=1)[:, :k]
        crops = np.empty_like(self.crops)
        for c in range(len(crops)):
            for rank, source in enumerate(order[c]):
                crops[c, rank] = self.crops[c, source] if source < k else state["crops"][c, source - k]
        self.crops = crops
        self.values, self.images, self.positions, self.names = (
            np.take_along_axis(a, order, axis=1) for a in (values, images, positions, names))

    def _updated_crops(self, order: np.ndarray, positions: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Kept tiles move with their entries; entries new from this batch are cut."""
        k, width = self.params.top_k, self.map_size[1]
        crops = np.empty_like(self.crops)
        for c in range(len(self.crops)):
            for rank, source in enumerate(order[c]):
                if source < k:
                    crops[c, rank] = self.crops[c, source]
                else:
                    position = positions[c, source]
                    box = self.geometry.boxes(position // width, position % width)
                    crops[c, rank] = tile_image(pixels[source - k], box, self.params.tile)
        return crops

    def finish(self) -> Analysis:
        filled = int((self.images[0] >= 0).sum()) if len(self.images) else 0  # fewer than k images: shorter lists
        values, images, positions = self.values[:, :filled], self.images[:, :filled], self.positions[:, :filled]
        ys, xs = positions // self.map_size[1], positions % self.map_size[1]
        boxes = self.geometry.boxes(ys, xs)
        index = [
            {"channel": int(channel), "rank": rank, "image": str(self.names[c, rank]), "index": int(images[c, rank]),
             "box": [int(v) for v in boxes[c, rank]], "position": [int(ys[c, rank]), int(xs[c, rank])],
             "value": float(values[c, rank])}
            for c, channel in enumerate(self.channels) for rank in range(filled)
        ]
        return Analysis(
            arrays={"values": values, "images": images, "boxes": boxes, "positions": np.stack([ys, xs], axis=-1),
                    "channels": self.channels.astype(np.int64)},
            pictures=self._pictures(filled),
            facts={"layer": self.layer, "top_k": self.params.top_k, "channels": [int(c) for c in self.channels],
                   "receptive_field": self.geometry.describe(), "box_format": "[y0, y1, x0, x1] in model-input pixels, ends exclusive",
                   "index": index},
        )

    def _pictures(self, filled: int) -> dict[str, np.ndarray]:
        if filled == 0:
            return {}
        pictures = {}
        columns = math.ceil(math.sqrt(filled))
        for c in range(len(self.crops)):
            tiles = list(self.crops[c, :filled])
            pictures[f"channel_{int(self.channels[c])}"] = render.tile([tiles[i : i + columns] for i in range(0, filled, columns)])
        rows = min(self.params.overview_channels, len(self.crops))
        if rows:
            pictures["overview"] = render.tile([list(self.crops[c, :filled]) for c in range(rows)])
        return pictures


@hookimpl
def cnnviz_methods():
    return [TopPatches]
