"""Where an evaluation keeps its finished work, so that a rerun of the same
command skips it:

    OUT/evaluation/maps/METHOD/NNNNNN.npz          one chunk of images' maps and classes
    OUT/evaluation/scores/METHOD/METRIC/NNNNNN.npz one chunk's MetricScores

Each file is written atomically and holds the digest of everything its
content depends on (model and weights, method and its parameters, metric
and its parameters, the target, the chunk's images); a file whose digest
differs from the one wanted (changed parameters, other images, another
model) is ignored and overwritten, never reused. Without a weights digest
nothing is reused."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from .. import atomic
from ..metric import MetricScores

FOLDER = "evaluation"


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=atomic.json_default).encode()).hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


class UnitStore:
    """Finished maps and scores by chunk; ``out=None`` keeps nothing."""

    def __init__(self, out: str | None, reusable: bool = True):
        self.out = None if out is None else os.path.join(os.fspath(out), FOLDER)
        self.reusable = reusable
        self.reused = 0  # units read back instead of computed, for reports and tests

    def _path(self, *parts: str) -> str:
        if self.out is None:
            return ""
        return os.path.join(self.out, *[_safe(p) for p in parts[:-1]], parts[-1])

    def _read(self, path: str, key: str) -> dict[str, np.ndarray] | None:
        if self.out is None or not self.reusable or not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) != key:
                    return None
                arrays = {name: stored[name] for name in stored.files if name != "key"}
        except (OSError, ValueError, KeyError):  # a damaged file is recomputed
            return None
        self.reused += 1
        return arrays

    def _write(self, path: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.out is None:
            return
        with atomic.atomic_open(path, "wb") as stream:
            np.savez(stream, key=np.asarray(key), **arrays)

    # -- maps ---------------------------------------------------------------
    def maps_path(self, method: str, chunk: int) -> str:
        return self._path("maps", method, f"{chunk:06d}.npz")

    def read_maps(self, method: str, chunk: int, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        arrays = self._read(self.maps_path(method, chunk), key)
        return None if arrays is None else (arrays["maps"], arrays["classes"])

    def write_maps(self, method: str, chunk: int, key: str, maps: np.ndarray, classes: np.ndarray) -> None:
        self._write(self.maps_path(method, chunk), key, {"maps": maps, "classes": classes})

    # -- scores -------------------------------------------------------------
    def scores_path(self, method: str, metric: str, chunk: int) -> str:
        return self._path("scores", method, metric, f"{chunk:06d}.npz")

    def read_scores(self, method: str, metric: str, chunk: int, key: str) -> MetricScores | None:
        arrays = self._read(self.scores_path(method, metric, chunk), key)
        if arrays is None:
            return None
        pick = lambda prefix: {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}  # noqa: E731
        return MetricScores(arrays["scores"], pick("curve."), pick("curve_x."), pick("extra."))

    def write_scores(self, method: str, metric: str, chunk: int, key: str, scores: MetricScores) -> None:
        arrays = {"scores": scores.scores}
        arrays.update({f"curve.{k}": v for k, v in scores.curves.items()})
        arrays.update({f"curve_x.{k}": v for k, v in scores.curve_x.items()})
        arrays.update({f"extra.{k}": v for k, v in scores.extras.items()})
        self._write(self.scores_path(method, metric, chunk), key, arrays)
