"""Energy-based pointing game (Wang et al. 2020, the Score-CAM paper): the
share of the map's energy that falls on the object, in [0, 1]; higher is
better.

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.localization_math`):
as Score-CAM's authors, the map is first min-max scaled to [0, 1]; the score
is ``Σ_region m / Σ_all m`` of the scaled map. A constant map has no energy:
NaN (left out of the summary). The region is the union of the image's boxes
or its mask at the model's input size (see the ``pointing_game`` docstring
for the annotation formats). Needs only maps and annotations."""

from __future__ import annotations

from cnnviz_core import hookimpl

from cnnviz_plugins.evaluation.support.localization import RegionMetric
from cnnviz_plugins.evaluation.support.localization_math import energy_share


class EnergyPointingGame(RegionMetric):
    """Energy pointing game (Wang et al. 2020): share of the min-max scaled map inside the object's box or mask; higher is better."""

    name = "energy_pointing_game"
    higher_is_better = True

    def score(self, saliency, region) -> float:
        return energy_share(saliency, region)


@hookimpl
def cnnviz_methods():
    return [EnergyPointingGame]
