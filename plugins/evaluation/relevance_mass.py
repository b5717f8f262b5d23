"""Relevance mass accuracy (Arras et al. 2022): the share of the positive
relevance that lies inside the object's mask or boxes, in [0, 1]; higher is
better.

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.localization_math`):
as Arras et al., only positive relevance counts: ``Σ_region max(m, 0) /
Σ_all max(m, 0)`` of the raw map (unlike the energy pointing game, no
min-max scaling, so a map's offset matters); a map with no positive value
scores 0. A uniform map scores the object's share of the image (reported as
the ``uniform`` reference). Needs only maps and annotations."""

from __future__ import annotations

from cnnviz_core import hookimpl

from cnnviz_plugins.evaluation.support.localization import RegionMetric
from cnnviz_plugins.evaluation.support.localization_math import relevance_mass


class RelevanceMass(RegionMetric):
    """Relevance mass accuracy (Arras et al. 2022): share of the positive relevance inside the object; higher is better."""

    name = "relevance_mass"
    higher_is_better = True
    references = ("random", "uniform", "sobel")

    def score(self, saliency, region) -> float:
        return relevance_mass(saliency, region)


@hookimpl
def cnnviz_methods():
    return [RelevanceMass]
