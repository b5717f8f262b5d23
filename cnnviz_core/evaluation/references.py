"""Model-free reference maps reported beside the methods, so that a metric's
score means something: a method should beat a random map, a uniform map and
an edge detector on faithfulness, and only a model-free map should survive
model randomization.

- ``random``: uniform noise on a coarse grid (:data:`RANDOM_CELLS` cells per
  side, about a CAM's resolution), upsampled bilinearly to the input size:
  random regions, not scattered pixels (removing scattered pixels makes
  salt noise the model was never trained on, which deletes any class score
  fast and would flatter a random map). Seeded by the input's bytes and the
  class, so a rerun, and the same input asked again, give the same map;
- ``uniform``: every pixel 1 (its order is reading order);
- ``sobel``: the gradient magnitude of the channel mean of the input (3 x 3
  Sobel, edges replicated): image-only, it cannot depend on the model.

Each is ``fn(inputs (n, 3, H, W), classes (n,)) -> (n, H, W) float32``."""

from __future__ import annotations

import hashlib

import numpy as np

RANDOM_CELLS = 7


def random_maps(inputs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs, dtype=np.float32)
    n, _, height, width = inputs.shape
    maps = np.empty((n, height, width), np.float32)
    for i in range(n):
        digest = hashlib.sha256(np.ascontiguousarray(inputs[i]).tobytes() + int(classes[i]).to_bytes(8, "little", signed=True))
        grid = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little")).random((RANDOM_CELLS, RANDOM_CELLS))
        maps[i] = _bilinear(grid, height, width)
    return maps


def _bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample a small grid to (height, width), cell centres aligned (align_corners=False)."""
    def axis(size: int, cells: int):
        position = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, cells - 1)
        return low, high, position - low

    y0, y1, fy = axis(height, grid.shape[0])
    x0, x1, fx = axis(width, grid.shape[1])
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def uniform_maps(inputs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    n, _, height, width = np.shape(inputs)
    return np.ones((n, height, width), np.float32)


def sobel_maps(inputs: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    grey = np.asarray(inputs, dtype=np.float64).mean(axis=1)
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = grey.shape[1:]

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    gx = shifted(-1, 1) + 2 * shifted(0, 1) + shifted(1, 1) - shifted(-1, -1) - 2 * shifted(0, -1) - shifted(1, -1)
    gy = shifted(1, -1) + 2 * shifted(1, 0) + shifted(1, 1) - shifted(-1, -1) - 2 * shifted(-1, 0) - shifted(-1, 1)
    return np.hypot(gx, gy).astype(np.float32)


REFERENCES = {"random": random_maps, "uniform": uniform_maps, "sobel": sobel_maps}


def reference_label(name: str) -> str:
    return f"reference:{name}"
