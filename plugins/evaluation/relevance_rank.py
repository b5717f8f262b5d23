"""Relevance rank accuracy (Arras et al. 2022): with K the object's size in
pixels, the fraction of the map's K highest pixels that lie on the object,
in [0, 1]; higher is better.

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.localization_math`):
raw map values ranked highest first, ties broken by reading order (a stable
sort); the object is the union of the image's boxes or its mask at the
model's input size. A random map scores about the object's share of the
image (the ``random`` reference). Needs only maps and annotations."""

from __future__ import annotations

from cnnviz_core import hookimpl

from cnnviz_plugins.evaluation.support.localization import RegionMetric
from cnnviz_plugins.evaluation.support.localization_math import relevance_rank


class RelevanceRank(RegionMetric):
    """Relevance rank accuracy (Arras et al. 2022): fraction of the K top pixels on the K-pixel object; higher is better."""

    name = "relevance_rank"
    higher_is_better = True

    def score(self, saliency, region) -> float:
        return relevance_rank(saliency, region)


@hookimpl
def cnnviz_methods():
    return [RelevanceRank]
