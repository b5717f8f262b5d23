"""Helpers for the metric tests: a MetricBatch of real maps, with ``explain``
re-running the method through the public API, and an image-only edge
detector (a model-free reference whose maps cannot depend on weights or
classes)."""

from __future__ import annotations

import numpy as np

import cnnviz_core
from cnnviz_core import MetricBatch


def explainer(method: str, adapter, **params):
    """``explain(inputs, classes) -> maps`` that runs ``method`` on the adapter as it is at call time."""
    def explain(inputs, classes):
        return cnnviz_core.run(method, adapter, np.asarray(inputs, dtype=np.float32),
                               target=[int(c) for c in classes], normalized=True, **params).maps
    return explain


def sobel_maps(inputs, classes=None) -> np.ndarray:
    """Gradient magnitude of the channel mean (3 x 3 Sobel, edges replicated)."""
    grey = np.asarray(inputs, dtype=np.float64).mean(axis=1)
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")

    def at(dy, dx):
        return padded[:, 1 + dy:padded.shape[1] - 1 + dy, 1 + dx:padded.shape[2] - 1 + dx]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return np.hypot(gx, gy).astype(np.float32)


def method_batch(method: str, adapter, inputs, names, target=None, **params) -> MetricBatch:
    """A batch of ``method``'s maps of ``inputs`` (normalized) for ``target`` (default: top-1)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    result = cnnviz_core.run(method, adapter, inputs, target=target, normalized=True, **params)
    return MetricBatch(inputs=inputs, maps=result.maps, classes=np.asarray(result.classes), names=list(names),
                       method=method, explain=explainer(method, adapter, **params))


def sobel_batch(batch: MetricBatch) -> MetricBatch:
    return MetricBatch(inputs=batch.inputs, maps=sobel_maps(batch.inputs), classes=batch.classes, names=batch.names,
                       method="reference:sobel", explain=sobel_maps)
