"""Deletion (Petsiuk, Das & Saenko 2018, "RISE"): how fast the class score
falls as the pixels a map calls most relevant are removed first.

Definition choices:
- the score is the target class's softmax probability (``--score logit`` for
  the logit), on the clean image at step 0;
- ``steps`` equal steps each remove round(H*W/steps) pixels (the paper: 224
  steps of 224 pixels at 224 px), so the curve has ``steps + 1`` points, from
  nothing removed to everything removed;
- removed pixels take the baseline: ``mean`` (default) is 0 in normalized
  space, the dataset's mean colour, as RISE's code (zeros on the normalized
  tensor); ``black`` is pixel value 0; ``blur`` a Gaussian blur of the image;
- pixels are ranked by the map's value, highest first (a signed map's
  negative pixels come last); ties keep reading order;
- the score is the area under the curve over the fraction of pixels removed,
  by the trapezoid rule (x from 0 to 1). Lower is better.
"""

from __future__ import annotations

import dataclasses

from cnnviz_core import MetricBatch, PerturbationParams, hookimpl, param

from cnnviz_plugins.evaluation.support.baselines import baseline_images
from cnnviz_plugins.evaluation.support.ordered_curve import OrderedCurveMetric


@dataclasses.dataclass
class DeletionParams(PerturbationParams):
    steps: int = param(224, "removal steps (the curve has steps + 1 points)", minimum=1)
    baseline: str = param("mean", "what removed pixels become: the dataset mean colour (0 after normalization), "
                                  "black, or a Gaussian blur of the image", choices=("mean", "black", "blur"))
    blur_sigma: float = param(5.0, "blur standard deviation in pixels, for --baseline blur", minimum=0.1)


class Deletion(OrderedCurveMetric):
    """Deletion AUC (Petsiuk et al. 2018): class score as the most relevant pixels are removed first; lower is better."""

    name = "deletion"
    Params = DeletionParams
    higher_is_better = False
    curve = "deletion"
    curve_axes = {"deletion": ("fraction of pixels removed", "class score")}

    def endpoints(self, batch: MetricBatch):
        p = self.params
        return batch.inputs, baseline_images(batch.inputs, p.baseline, self.adapter.config, p.blur_sigma)


@hookimpl
def cnnviz_methods():
    return [Deletion]
