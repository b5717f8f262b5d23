"""Pixel flipping / region perturbation (Samek, Binder, Montavon, Lapuschkin
& Müller 2017): perturb the image region by region in the order of the map,
most relevant first (MoRF) or least relevant first (LeRF), and report the
area over the perturbation curve (AOPC).

Definition choices:
- regions are the non-overlapping ``patch`` x ``patch`` squares of a grid
  laid from the top-left corner (border squares are smaller), ranked by their
  mean relevance (Samek et al. centre a 9 x 9 region on each most relevant
  pixel and let regions overlap; a fixed grid, as Quantus's region
  perturbation, perturbs every pixel at most once); ties keep reading order;
- ``regions`` squares are perturbed, one per step (the paper: 100 steps of
  9 x 9 regions at 224 px), so the curve has regions + 1 points;
- a perturbed region takes values drawn from U(0, 1) in pixel space
  (``--baseline uniform``, the paper's choice; seeded by ``seed`` and the
  image's name, so every method meets the same noise), or the mean colour,
  black, or a blur;
- AOPC = 1 / (L + 1) · Σ_{k=0..L} (f(x⁽⁰⁾) − f(x⁽ᵏ⁾)), f the target class's
  softmax probability (``--score logit`` for the logit). For MoRF higher is
  better (relevant regions first make the score fall fast); for LeRF lower
  is better.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import MetricBatch, MetricScores, PerturbationParams, hookimpl, param

from cnnviz_plugins.evaluation.support.baselines import BASELINES, baseline_images
from cnnviz_plugins.evaluation.support.ordered_curve import OrderedCurveMetric


@dataclasses.dataclass
class PixelFlippingParams(PerturbationParams):
    order: str = param("morf", "morf: most relevant regions first; lerf: least relevant first", choices=("morf", "lerf"))
    patch: int = param(9, "side of the square regions, in pixels", minimum=1)
    regions: int = param(100, "regions perturbed, one per step", minimum=1)
    baseline: str = param("uniform", "what perturbed pixels become: U(0, 1) noise, the mean colour, black, or a blur",
                          choices=BASELINES)
    blur_sigma: float = param(5.0, "blur standard deviation in pixels, for --baseline blur", minimum=0.1)
    seed: int = param(0, "seed of the noise (with each image's name)")


class PixelFlipping(OrderedCurveMetric):
    """Pixel flipping / region perturbation AOPC (Samek et al. 2017), MoRF or LeRF with patch size; MoRF: higher is better."""

    name = "pixel_flipping"
    Params = PixelFlippingParams
    higher_is_better = True
    curve = "pixel_flipping"
    curve_axes = {"pixel_flipping": ("regions perturbed", "class score")}

    def __init__(self, adapter, params=None, scheduler=None):
        super().__init__(adapter, params, scheduler)
        self.higher_is_better = self.params.order == "morf"

    def patch(self) -> int:
        return self.params.patch

    def counts(self, units: int) -> np.ndarray:
        return np.arange(min(self.params.regions, units) + 1)

    def order_maps(self, batch: MetricBatch) -> np.ndarray:
        return batch.maps if self.params.order == "morf" else -np.asarray(batch.maps)

    def endpoints(self, batch: MetricBatch):
        p = self.params
        return batch.inputs, baseline_images(batch.inputs, p.baseline, self.adapter.config, p.blur_sigma, p.seed,
                                             batch.names, "pixel_flipping")

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        scores, counts, _ = self.curves(batch)
        aopc = (scores[:, :1] - scores).mean(axis=1)
        return MetricScores(aopc, curves={self.curve: scores}, curve_x={self.curve: counts.astype(np.float64)})


@hookimpl
def cnnviz_methods():
    return [PixelFlipping]
