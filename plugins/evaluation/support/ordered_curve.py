"""What deletion, insertion and pixel flipping share: walk each image from a
start to an end in the order of its map, score every step in one batched
job, and report the score curve and its area."""

from __future__ import annotations

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores

from cnnviz_plugins.evaluation.support.ordered_replacement import (
    OrderedReplacement,
    relevance_ranks,
    step_counts,
    trapezoid_auc,
)


class OrderedCurveMetric(Metric):
    """Subclasses say where each image starts and ends (:meth:`endpoints`),
    the unit size (:meth:`patch`) and the number of steps (``params.steps``)."""

    requires = frozenset({"forward"})
    curve: str = ""  # the curve's name, e.g. "deletion"

    def endpoints(self, batch: MetricBatch) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) images, each (b, 3, H, W) normalized."""
        raise NotImplementedError

    def patch(self) -> int:
        return 1

    def order_maps(self, batch: MetricBatch) -> np.ndarray:
        """The maps whose order is followed (most relevant first)."""
        return batch.maps

    def counts(self, units: int) -> np.ndarray:
        """Units replaced at each point of the curve (from 0)."""
        return step_counts(units, min(self.params.steps, units))

    def curves(self, batch: MetricBatch) -> tuple[np.ndarray, np.ndarray, int]:
        """(b, points) scores, the (points,) units replaced at each, and the number of units."""
        ranks, units = relevance_ranks(self.order_maps(batch), self.patch())
        counts = self.counts(units)
        start, end = self.endpoints(batch)
        job = OrderedReplacement(start, end, ranks, counts)
        classes = np.repeat(np.asarray(batch.classes, dtype=np.int64), len(counts))
        scores = self.forward.scores_of(len(job), job, classes).reshape(len(batch), len(counts))
        return scores, counts, units

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        scores, counts, units = self.curves(batch)
        x = counts / units
        return MetricScores(trapezoid_auc(scores, x), curves={self.curve: scores}, curve_x={self.curve: x})
