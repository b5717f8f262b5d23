"""Sparseness (Chalasani et al. 2020): the Gini index of ``|map|`` — how few
pixels carry the attribution. 1 when one pixel holds it all, 0 when every
pixel holds the same; higher is better (a sparse map is easier to read).

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.complexity_math`):
the normalized Gini index ``Σ_k (2k − n − 1) a_(k) / ((n − 1) Σ a)`` over the
n pixel magnitudes sorted ascending — Chalasani et al.'s index times
``n / (n − 1)``, so the extremes are exactly 1 and 0 (Quantus's value is
``(n − 1) / n`` times this one); an all-zero map scores 0. It needs only the
maps: no forward pass, any model."""

from __future__ import annotations

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores, hookimpl

from cnnviz_plugins.evaluation.support.complexity_math import gini


class Sparseness(Metric):
    """Sparseness (Chalasani et al. 2020): Gini index of |map|, 1 for one pixel, 0 for a uniform map; higher is better."""

    name = "sparseness"
    higher_is_better = True
    references = ("random", "uniform", "sobel")

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        return MetricScores(np.array([gini(m) for m in batch.maps], dtype=np.float64))


@hookimpl
def cnnviz_methods():
    return [Sparseness]
