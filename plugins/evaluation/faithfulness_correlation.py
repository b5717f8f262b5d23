"""Faithfulness correlation (Bhatt, Weller & Moura 2020): over random subsets
S of pixels, does the map's total relevance on S predict how much the class
score drops when S is replaced by a baseline? The Pearson correlation of
Σ_{i∈S} Φ_i with f(x) − f(x_S) over ``runs`` subsets, per image.

Definition choices:
- ``runs`` subsets (default 100) of ``subset`` pixels each (default 224, as
  Quantus at 224 px), drawn uniformly without replacement, seeded by
  ``seed`` and the image's name so every method meets the same subsets; a
  pixel's three channels are replaced together;
- the baseline is the dataset mean colour (0 in normalized space — what
  Quantus's "black" baseline is on normalized inputs), or black, blur, or
  U(0, 1) noise;
- f is the target class's logit by default, as Quantus (the model's output
  without softmax); ``--score prob`` for the probability;
- an image whose sums or drops do not vary (a uniform map, say) has no
  correlation: NaN, left out of the mean. Higher is better.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores, PerturbationParams, hookimpl, param

from cnnviz_plugins.evaluation.support.baselines import BASELINES, baseline_images, image_rng
from cnnviz_plugins.evaluation.support.random_subsets import SubsetReplacement


@dataclasses.dataclass
class FaithfulnessCorrelationParams(PerturbationParams):
    score: str = param("logit", "the model output watched: the target's logit (Quantus's choice) or softmax probability",
                       choices=("logit", "prob"))
    runs: int = param(100, "random subsets per image", minimum=2)
    subset: int = param(224, "pixels per subset", minimum=1)
    baseline: str = param("mean", "what the subset's pixels become", choices=BASELINES)
    blur_sigma: float = param(5.0, "blur standard deviation in pixels, for --baseline blur", minimum=0.1)
    seed: int = param(0, "seed of the subsets (with each image's name)")


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation; NaN where a row does not vary."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / np.where(denominator > 0, denominator, 1), np.nan)


class FaithfulnessCorrelation(Metric):
    """Faithfulness correlation (Bhatt et al. 2020): Pearson r of relevance on random pixel subsets with the score drop when they are removed; higher is better."""

    name = "faithfulness_correlation"
    Params = FaithfulnessCorrelationParams
    requires = frozenset({"forward"})
    higher_is_better = True
    references = ("random", "sobel")  # a uniform map's subset sums do not vary: no correlation

    def _draws(self, name: str, pixels: int, size: int) -> np.ndarray:
        rng = image_rng(self.params.seed, name, "faithfulness_correlation")
        return np.stack([rng.choice(pixels, size=size, replace=False) for _ in range(self.params.runs)])

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        p = self.params
        b = len(batch)
        pixels = batch.maps.shape[1] * batch.maps.shape[2]
        size = min(p.subset, pixels)
        subsets = np.stack([self._draws(name, pixels, size) for name in batch.names])  # (b, runs, size)
        baselines = baseline_images(batch.inputs, p.baseline, self.adapter.config, p.blur_sigma, p.seed, batch.names,
                                    "faithfulness_correlation.baseline")
        classes = np.asarray(batch.classes, dtype=np.int64)
        clean = self.forward.scores(batch.inputs, classes)
        job = SubsetReplacement(batch.inputs, baselines, subsets)
        perturbed = self.forward.scores_of(len(job), job, np.repeat(classes, p.runs)).reshape(b, p.runs)
        flat = np.asarray(batch.maps, dtype=np.float64).reshape(b, 1, -1)
        sums = np.take_along_axis(np.broadcast_to(flat, (b, p.runs, flat.shape[2])), subsets, axis=2).sum(axis=2)
        return MetricScores(pearson(sums, clean[:, None] - perturbed))


@hookimpl
def cnnviz_methods():
    return [FaithfulnessCorrelation]
