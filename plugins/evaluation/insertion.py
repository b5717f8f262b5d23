"""Insertion (Petsiuk, Das & Saenko 2018, "RISE"): how fast the class score
rises as the pixels a map calls most relevant are put back first into a
blurred copy of the image.

Definition choices:
- the score is the target class's softmax probability (``--score logit`` for
  the logit);
- the start is the image blurred by a Gaussian of ``blur_sigma`` pixels
  (default 5, edges replicated). RISE's code blurs with an 11-tap kernel of
  σ = 1 tap; at that blur a 224-px photo is still recognised, so the curve
  would start near its end: a stronger blur is the default, ``--blur-sigma 1``
  gives the code's;
- ``steps`` equal steps each insert round(H*W/steps) pixels; ``steps + 1``
  points from the blurred image to the image itself;
- pixels are ranked by the map's value, highest first; ties keep reading order;
- the score is the area under the curve over the fraction of pixels
  inserted, by the trapezoid rule. Higher is better.
"""

from __future__ import annotations

import dataclasses

from cnnviz_core import MetricBatch, PerturbationParams, hookimpl, param
from cnnviz_core.toolkit import gaussian_blur

from cnnviz_plugins.evaluation.support.ordered_curve import OrderedCurveMetric


@dataclasses.dataclass
class InsertionParams(PerturbationParams):
    steps: int = param(224, "insertion steps (the curve has steps + 1 points)", minimum=1)
    blur_sigma: float = param(5.0, "standard deviation in pixels of the blur the image starts from", minimum=0.1)


class Insertion(OrderedCurveMetric):
    """Insertion AUC (Petsiuk et al. 2018): class score as the most relevant pixels return to a blurred image; higher is better."""

    name = "insertion"
    Params = InsertionParams
    higher_is_better = True
    curve = "insertion"
    curve_axes = {"insertion": ("fraction of pixels inserted", "class score")}

    def endpoints(self, batch: MetricBatch):
        return gaussian_blur(batch.inputs, self.params.blur_sigma), batch.inputs


@hookimpl
def cnnviz_methods():
    return [Insertion]
