"""Pointing game (Zhang et al. 2016/2018, with its energy-based version in
Wang et al. 2020's Score-CAM paper: ``energy_pointing_game``): a hit when the
map's maximum falls on the object. Per image 1 (hit) or 0 (miss); the summary's mean is the
accuracy; higher is better.

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.localization_math`
and, for the object's region, :mod:`~cnnviz_plugins.evaluation.support.regions`):
the region is the union of the image's boxes (a JSON of
``{"image.jpg": [[x0, y0, x1, y1], ...]}`` in original-image pixels) or its
mask (``NAME.mask.png``), carried to the model's input size as the image is
resized; the maximum is the first in reading order when tied; a hit within
``tolerance`` input pixels of the region counts (Zhang et al. use 15 px;
default 0, the maximum must lie inside). Needs only maps and annotations."""

from __future__ import annotations

import dataclasses

from cnnviz_core import MetricParams, hookimpl, param

from cnnviz_plugins.evaluation.support.localization import RegionMetric
from cnnviz_plugins.evaluation.support.localization_math import pointing_hit


@dataclasses.dataclass
class PointingGameParams(MetricParams):
    tolerance: float = param(0.0, "a maximum within this many input pixels of the object still hits (Zhang et al.: 15)",
                             minimum=0.0)


class PointingGame(RegionMetric):
    """Pointing game (Zhang et al. 2018): 1 when the map's maximum lies on the object's box or mask; higher is better."""

    name = "pointing_game"
    Params = PointingGameParams
    higher_is_better = True

    def score(self, saliency, region) -> float:
        return float(pointing_hit(saliency, region, self.params.tolerance))


@hookimpl
def cnnviz_methods():
    return [PointingGame]
