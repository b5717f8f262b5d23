"""D-RISE (Petsiuk et al., CVPR 2021) as a cnnviz plugin: RISE for object
detectors. Forward passes only, so it runs on every adapter, ONNX included.

N random smooth masks M_i (a coarse s×s grid of cells kept with probability
p, upsampled bilinearly and shifted by a random offset, as in RISE) hide parts
of the image; the detector runs on each masked image x ⊙ M_i + b (1 − M_i).
Each mask is weighted by how well the masked image still finds the target
object, w_i = max over detections d of IoU(d, box) × score_d over the
detections labelled with the target's class; the map is Σ_i w_i M_i / N.

The similarity: the paper compares the target with each detection through
IoU × the cosine of their class-probability vectors (× objectness where the
detector has one). Torchvision's detectors report one class and its score
per detection, so here the class vector is that one-hot class scaled by its
score: the cosine term becomes the score of a detection of the target's class
(and 0 for any other class). It is the same quantity the gradient methods
explain for a ``detection:`` target (``toolkit.detection_score``).

The model's outputs must be detection rows (x0, y0, x1, y1, score, label):
(B, N, 6) as ``cnnviz_adapters.DetectionModel`` returns them, or the same rows
flattened to (B, 6·N) (an ONNX copy's output as the ONNX adapter reads it).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, MethodWarning, hookimpl, param, validate_targets


@dataclasses.dataclass
class DriseParams(AttributionParams):
    masks: int = param(1000, "number of random masks N", minimum=1)
    grid: int = param(16, "side s of the coarse random grid each mask is drawn on (the paper: 16)", minimum=1)
    keep: float = param(0.5, "probability p that a grid cell is kept", minimum=0.01)
    baseline: float = param(0.0, "value masked pixels take, in the model's input space")
    seed: int = param(0, "random seed of the masks: the same seed gives the same maps")
    batch_size: int | None = param(None, "masked copies per forward pass (default 16); halved on out-of-memory", minimum=1)


@dataclasses.dataclass(frozen=True)
class MaskDraw:
    """The random grids and shifts of N masks, drawn once from the seed; mask
    i is the same whatever batch it is made in."""

    cells: np.ndarray  # (N, s, s) float32 in {0, 1}
    shifts: np.ndarray  # (N, 2) (dy, dx) offsets into the upsampled grid
    size: tuple[int, int]

    @classmethod
    def draw(cls, count: int, grid: int, keep: float, size: tuple[int, int], seed: int) -> "MaskDraw":
        rng = np.random.default_rng(seed)
        cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
        cells = (rng.random((count, grid, grid)) < keep).astype(np.float32)
        return cls(cells, np.stack([rng.integers(0, cell[0], count), rng.integers(0, cell[1], count)], axis=1), tuple(size))

    def masks(self, start: int, stop: int) -> np.ndarray:
        """(n, H, W) smooth masks in [0, 1]: the grids upsampled bilinearly to
        (s + 1) cells and cropped at their shifts."""
        import torch
        import torch.nn.functional as F

        (height, width), grid = self.size, self.cells.shape[1]
        cell = (math.ceil(height / grid), math.ceil(width / grid))
        up = F.interpolate(torch.from_numpy(self.cells[start:stop, None]), size=((grid + 1) * cell[0], (grid + 1) * cell[1]),
                           mode="bilinear", align_corners=False)[:, 0].numpy()
        return np.stack([up[k, dy : dy + height, dx : dx + width] for k, (dy, dx) in enumerate(self.shifts[start:stop])])


def detection_rows(outputs: np.ndarray, batch: int, method: str) -> np.ndarray:
    """(batch, N, 6) rows from a detector's outputs, or a typed error saying what is needed."""
    from cnnviz_core import MethodError

    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 3 and outputs.shape[-1] == 6:
        return outputs
    if outputs.ndim == 2 and outputs.shape[0] == batch and outputs.shape[1] % 6 == 0:
        return outputs.reshape(batch, -1, 6)
    raise MethodError(method, f"the model outputs shape {outputs.shape}, not detections: drise needs a detector whose "
                              "outputs are rows (x0, y0, x1, y1, score, label), (B, N, 6); wrap a torchvision detector "
                              "in cnnviz_adapters.DetectionModel")


def similarity(rows: np.ndarray, box: np.ndarray, label: int) -> np.ndarray:
    """(n,) for (n, N, 6) rows: max over detections of the target's class of IoU(detection, box) × score."""
    top_left = np.maximum(rows[..., :2], box[:2])
    bottom_right = np.minimum(rows[..., 2:4], box[2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
    areas = np.clip(rows[..., 2:4] - rows[..., :2], 0, None).prod(axis=-1)
    union = np.maximum(areas + (box[2:] - box[:2]).prod() - inter, 1e-12)
    same = np.round(rows[..., 5]) == label
    return np.where(same, inter / union * rows[..., 4], 0.0).max(axis=-1, initial=0.0)


class Drise(AttributionMethod):
    """D-RISE: random masks weighted by IoU × score of the masked image's best detection of the target (detectors, forward only)."""

    name = "drise"
    requires = frozenset({Capability.FORWARD})
    Params = DriseParams
    batch_hint = 16
    demo_params = {"masks": 256}
    explains = "detection"  # a detector's object: the classifier conformance runs and the demo leave it out

    @classmethod
    def check_params(cls, params) -> None:
        if not 0 < params.keep <= 1:
            from cnnviz_core import InputError

            raise InputError(f"drise: --keep must be in (0, 1], got {params.keep}")

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"detection"}, self.name,
                         advice="drise explains one detected object: give detection:CLASS@x0,y0,x1,y1")

    def batch_size(self) -> int:
        return 1  # images one at a time; their masked copies are batched below

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        p = self.params
        clean = detection_rows(self.adapter.logits(inputs), len(inputs), self.name)
        draw = MaskDraw.draw(p.masks, p.grid, p.keep, inputs.shape[-2:], p.seed)
        maps, scores = [], []
        for index, (image, target) in enumerate(zip(inputs, targets)):
            box = np.asarray(target.box, dtype=np.float64)
            scores.append(float(similarity(clean[index : index + 1], box, target.class_index)[0]))
            if scores[-1] == 0:
                warnings.warn(f"drise: the unmasked image has no detection of class {target.class_index} overlapping "
                              f"the box {target.describe()}; the map will be flat", MethodWarning, stacklevel=2)

            def weighted_sum(start: int, stop: int, image=image, box=box, label=target.class_index) -> np.ndarray:
                masks = draw.masks(start, stop)[:, None]  # (n, 1, H, W)
                batch = (image[None] * masks + p.baseline * (1 - masks)).astype(np.float32)
                weights = similarity(detection_rows(self.adapter.logits(batch), stop - start, self.name), box, label)
                return np.tensordot(weights, masks[:, 0].astype(np.float64), axes=1)

            parts = self.scheduler.map_batches(weighted_sum, p.masks, p.batch_size or self.batch_hint)
            maps.append((np.sum(parts, axis=0) / p.masks).astype(np.float32))
        classes = np.array([t.class_index for t in targets], dtype=np.int64)
        return Attribution(maps=np.stack(maps), classes=classes, scores=np.array(scores, dtype=np.float32))


@hookimpl
def cnnviz_methods():
    return [Drise]
