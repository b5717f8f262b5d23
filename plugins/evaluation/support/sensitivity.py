"""Max- and average-sensitivity (Yeh et al. 2019, "On the (in)fidelity and
sensitivity of explanations"): how much an explanation changes under small
input noise the model barely notices.

For each image x with map Φ(x), ``samples`` perturbations δ are drawn
uniformly from the L∞ ball of radius ``radius`` and the method is re-run on
x + δ for the same class; each sample gives ``‖Φ(x + δ) − Φ(x)‖₂ / ‖Φ(x)‖₂``
(Frobenius norm over the map). Max-sensitivity is their maximum, average
sensitivity their mean (Yeh et al.'s Monte-Carlo estimates). Lower is better.

Choices:

- ``radius`` is in pixel units (pixels in [0, 1]), carried into the model's
  normalized space by dividing by each channel's std, so one radius means
  the same on every model; the default 0.02 is about 5 grey levels. The
  perturbed image is not clipped to valid pixels (as Yeh et al.).
- the noise is seeded by ``seed`` and the image's name: every method sees
  the same perturbations of an image.
- the relative norm, as Quantus's default (Yeh et al. define the absolute
  difference; dividing by ‖Φ(x)‖ makes methods of different scales
  comparable). A map that is zero everywhere has no relative change: NaN.
- Φ(x) is the map being evaluated (for a stochastic method, one draw).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricParams, MetricScores, param

from cnnviz_plugins.evaluation.support.seeding import image_rng


@dataclasses.dataclass
class SensitivityParams(MetricParams):
    radius: float = param(0.02, "half-width of the uniform input noise, in pixel units (pixels in [0, 1])", minimum=0.0)
    samples: int = param(10, "noisy copies of each image", minimum=1)
    seed: int = param(0, "seed of the noise (each image's noise also depends on its name)")


def relative_changes(maps: np.ndarray, noisy_maps: np.ndarray) -> np.ndarray:
    """(b, samples) ``‖Φ(x + δ) − Φ(x)‖ / ‖Φ(x)‖`` from (b, H, W) and (b, samples, H, W) maps."""
    maps = np.asarray(maps, dtype=np.float64)
    noisy = np.asarray(noisy_maps, dtype=np.float64)
    norms = np.sqrt((maps ** 2).sum(axis=(-2, -1)))
    changes = np.sqrt(((noisy - maps[:, None]) ** 2).sum(axis=(-2, -1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms[:, None] > 0, changes / norms[:, None], np.nan)


class SensitivityMetric(Metric):
    """Re-runs the method on noisy copies; subclasses reduce the samples."""

    Params = SensitivityParams
    higher_is_better = False
    reruns_method = True
    references = ("random", "sobel")
    reduce = staticmethod(np.max)

    def noise(self, batch: MetricBatch) -> np.ndarray:
        """(b, samples, 3, H, W) noise in the model's normalized space."""
        p = self.params
        std = np.asarray(self.adapter.config.std, dtype=np.float64).reshape(3, 1, 1)
        shape = (p.samples, *batch.inputs.shape[1:])
        return np.stack([(image_rng(p.seed, name, "sensitivity").uniform(-p.radius, p.radius, size=shape) / std)
                         .astype(np.float32) for name in batch.names])

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        samples = self.params.samples
        noisy = (batch.inputs[:, None] + self.noise(batch)).reshape(-1, *batch.inputs.shape[1:])
        maps = batch.explain(noisy, np.repeat(np.asarray(batch.classes), samples))
        changes = relative_changes(batch.maps, np.asarray(maps).reshape(len(batch), samples, *batch.maps.shape[1:]))
        return MetricScores(self.reduce(changes, axis=1), extras={"changes": changes})
