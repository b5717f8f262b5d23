"""Complexity (Bhatt et al. 2020): the entropy of the fractional
contributions ``p_i = |a_i| / Σ_j |a_j|`` of a map's pixels — how spread out
the attribution is. 0 when one pixel holds it all, ``log(H·W)`` for a uniform
map; lower is better (a simpler explanation).

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.complexity_math`):
natural logarithm, ``0 · log 0 = 0``, an all-zero map scored as uniform
(``log(H·W)``). It needs only the maps: no forward pass, any model."""

from __future__ import annotations

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores, hookimpl

from cnnviz_plugins.evaluation.support.complexity_math import entropy


class Complexity(Metric):
    """Complexity (Bhatt et al. 2020): entropy of the normalized |map|, 0 for one pixel, log(H*W) for uniform; lower is better."""

    name = "complexity"
    higher_is_better = False
    references = ("random", "uniform", "sobel")

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        return MetricScores(np.array([entropy(m) for m in batch.maps], dtype=np.float64))


@hookimpl
def cnnviz_methods():
    return [Complexity]
