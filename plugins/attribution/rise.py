"""RISE (Petsiuk, Das & Saenko 2018) as a cnnviz plugin: randomized input
sampling; forward passes only, so it runs on every adapter, ONNX included."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, hookimpl, param, resolve_classes, select_scores


@dataclasses.dataclass
class RiseParams(AttributionParams):
    masks: int = param(2000, "number of random masks N", minimum=1)
    grid: int = param(7, "side s of the coarse random grid each mask is drawn on", minimum=1)
    keep: float = param(0.5, "probability p that a grid cell is kept", minimum=0.01)
    baseline: float = param(0.0, "value masked pixels take, in the model's normalized input space (0 = the dataset mean)")
    seed: int = param(0, "random seed of the masks: the same seed gives the same maps")
    batch_size: int | None = param(None, "masked copies per forward pass (default 64); halved on out-of-memory", minimum=1)


@dataclasses.dataclass(frozen=True)
class MaskSet:
    """The coarse grids and shifts that define N masks; masks are made on demand
    per chunk so memory stays bounded whatever N is."""

    grids: np.ndarray  # (N, s, s) float32 in {0, 1}
    shifts: np.ndarray  # (N, 2) int: (dy, dx) crop offsets into the upsampled grid
    size: tuple[int, int]

    @classmethod
    def draw(cls, count: int, grid: int, keep: float, size: tuple[int, int], seed: int) -> "MaskSet":
        rng = np.random.default_rng(seed)
        height, width = size
        cell = (math.ceil(height / grid), math.ceil(width / grid))
        grids = (rng.random((count, grid, grid)) < keep).astype(np.float32)
        shifts = np.stack([rng.integers(0, cell[0], count), rng.integers(0, cell[1], count)], axis=1)
        return cls(grids, shifts, size)

    def masks(self, start: int, stop: int) -> np.ndarray:
        """Masks start..stop as (n, H, W) in [0, 1]: each grid upsampled
        bilinearly to (s + 1) cells and cropped at its random shift."""
        import torch
        import torch.nn.functional as F

        height, width = self.size
        s = self.grids.shape[1]
        cell = (math.ceil(height / s), math.ceil(width / s))
        up = F.interpolate(torch.from_numpy(self.grids[start:stop, None]), size=((s + 1) * cell[0], (s + 1) * cell[1]),
                           mode="bilinear", align_corners=False)[:, 0].numpy()
        out = np.empty((stop - start, height, width), dtype=np.float32)
        for k, (dy, dx) in enumerate(self.shifts[start:stop]):
            out[k] = up[k, dy : dy + height, dx : dx + width]
        return out


class Rise(AttributionMethod):
    """RISE: Σ_i score(x ⊙ M_i) · M_i / (N · p) over N random smooth masks."""

    name = "rise"
    requires = frozenset({Capability.FORWARD})
    Params = RiseParams
    batch_hint = 64
    demo_params = {"masks": 256}

    @classmethod
    def check_params(cls, params) -> None:
        if not 0 < params.keep <= 1:
            from cnnviz_core import InputError

            raise InputError(f"rise: --keep must be in (0, 1], got {params.keep}")

    def batch_size(self) -> int:
        return 1  # images one at a time; their masked copies are batched below

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        p = self.params
        mask_set = MaskSet.draw(p.masks, p.grid, p.keep, inputs.shape[-2:], p.seed)
        clean_logits = self.adapter.logits(inputs)
        classes = resolve_classes(targets, clean_logits)
        maps = []
        for image, cls in zip(inputs, classes):
            def weighted_sum(start: int, stop: int, image=image, cls=cls) -> np.ndarray:
                masks = mask_set.masks(start, stop)[:, None]  # (n, 1, H, W)
                batch = image[None] * masks + p.baseline * (1 - masks)
                scores = select_scores(self.adapter.logits(batch.astype(np.float32)), np.full(stop - start, cls), p.score)
                return np.tensordot(scores.astype(np.float64), masks[:, 0], axes=1)

            parts = self.scheduler.map_batches(weighted_sum, p.masks, p.batch_size or self.batch_hint)
            maps.append((np.sum(parts, axis=0) / (p.masks * p.keep)).astype(np.float32))
        return Attribution(maps=np.stack(maps), classes=classes, scores=select_scores(clean_logits, classes, p.score))


@hookimpl
def cnnviz_methods():
    return [Rise]
