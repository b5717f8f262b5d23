"""Occlusion (Zeiler & Fergus 2013) as a cnnviz plugin: forward passes only, so
it runs on every adapter, ONNX included."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, InputError, hookimpl, param
from cnnviz_core.adapter import select_scores
from cnnviz_core.targets import resolve_classes


@dataclasses.dataclass
class OcclusionParams(AttributionParams):
    window: int = param(16, "side of the square occluding window, in input pixels", minimum=1)
    stride: int = param(8, "step between window positions, in input pixels", minimum=1)
    baseline: float = param(0.0, "value the window is set to, in the model's normalized input space (0 = the dataset mean)")
    batch_size: int | None = param(None, "occluded copies per forward pass (default 64); halved on out-of-memory", minimum=1)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis; a last window flush with the edge is added
    when the stride does not land there, so every pixel is covered."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def spread_to_pixels(grid: np.ndarray, ys: list[int], xs: list[int], window: int, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel's mean over the windows covering it."""
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            total[y : y + window, x : x + window] += grid[i, j]
            count[y : y + window, x : x + window] += 1
    return (total / count).astype(np.float32)


class Occlusion(AttributionMethod):
    """Occlusion: the drop of the score when a sliding window is set to a baseline, averaged per pixel."""

    name = "occlusion"
    requires = frozenset({Capability.FORWARD})
    Params = OcclusionParams
    batch_hint = 64
    demo_params = {"window": 32, "stride": 16}

    def setup(self) -> None:
        height, width = self.adapter.config.input_size
        if self.params.window > min(height, width):
            raise InputError(f"occlusion: --window {self.params.window} is larger than the input ({height}x{width})")

    def batch_size(self) -> int:
        return 1  # images one at a time; the windows of each are batched below

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        window, stride, score = self.params.window, self.params.stride, self.params.score
        height, width = inputs.shape[-2:]
        ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
        positions = [(y, x) for y in ys for x in xs]
        clean_logits = self.adapter.logits(inputs)
        classes = resolve_classes(targets, clean_logits)
        clean = select_scores(clean_logits, classes, score)
        maps, grids = [], []
        for image, cls, base in zip(inputs, classes, clean):
            def occluded_scores(start: int, stop: int, image=image, cls=cls) -> np.ndarray:
                batch = np.repeat(image[None], stop - start, axis=0)
                for k, (y, x) in enumerate(positions[start:stop]):
                    batch[k, :, y : y + window, x : x + window] = self.params.baseline
                return select_scores(self.adapter.logits(batch), np.full(stop - start, cls), score)

            parts = self.scheduler.map_batches(occluded_scores, len(positions), self.params.batch_size or self.batch_hint)
            grid = (base - np.concatenate(parts)).reshape(len(ys), len(xs)).astype(np.float32)
            grids.append(grid)
            maps.append(spread_to_pixels(grid, ys, xs, window, (height, width)))
        return Attribution(
            maps=np.stack(maps),
            classes=classes,
            scores=clean,
            extras={"grid": np.stack(grids), "grid_y": np.tile(np.asarray(ys), (len(inputs), 1)), "grid_x": np.tile(np.asarray(xs), (len(inputs), 1))},
        )


@hookimpl
def cnnviz_methods():
    return [Occlusion]
