"""Random-logit test (Sixt, Granz & Landgraf 2020, "When explanations lie"):
does the map depend on the class it explains? The method is re-run for a
random other class and the two maps compared by SSIM; a class-sensitive
method gives dissimilar maps. Lower is better.

Definition choices:

- the other class is drawn uniformly from every class but the explained one,
  seeded by ``seed`` and the image's name (the same class for every method);
- SSIM as in the model-randomization test (see
  :mod:`cnnviz_plugins.evaluation.support.rank_similarity`: each map min-max
  scaled to [0, 1], scikit-image's defaults), of the raw maps unless
  ``absolute``; Spearman's rank correlation and the class drawn are kept as
  extras per image.
- the explained class's map is the map being evaluated.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import MethodError, Metric, MetricBatch, MetricParams, MetricScores, hookimpl, param

from cnnviz_plugins.evaluation.support.rank_similarity import spearman, ssim
from cnnviz_plugins.evaluation.support.seeding import image_rng


@dataclasses.dataclass
class RandomLogitParams(MetricParams):
    seed: int = param(0, "seed of the random class (each image's draw also depends on its name)")
    absolute: bool = param(False, "compare |map| instead of the signed maps")


class RandomLogit(Metric):
    """Random-logit test (Sixt et al. 2020): SSIM of the map for the explained class and for a random other class; lower is better."""

    name = "random_logit"
    Params = RandomLogitParams
    higher_is_better = False
    reruns_method = True
    references = ("random", "sobel")  # a class-blind map scores 1; a random map per class, about the floor

    def other_classes(self, batch: MetricBatch) -> np.ndarray:
        count = self.adapter.num_classes
        if count < 2:
            raise MethodError(self.name, f"model {self.adapter.name!r} has one class: there is no other class to explain")
        others = []
        for name, explained in zip(batch.names, np.asarray(batch.classes)):
            draw = int(image_rng(self.params.seed, name, "random_logit").integers(count - 1))
            others.append(draw + (draw >= explained))  # every class but the explained one, equally likely
        return np.asarray(others, dtype=np.int64)

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        others = self.other_classes(batch)
        other_maps = np.asarray(batch.explain(batch.inputs, others))
        absolute = self.params.absolute
        ssims = [ssim(a, b, absolute) for a, b in zip(batch.maps, other_maps)]
        ranks = [spearman(a, b, absolute) for a, b in zip(batch.maps, other_maps)]
        return MetricScores(np.asarray(ssims), extras={"spearman": np.asarray(ranks), "random_class": others})


@hookimpl
def cnnviz_methods():
    return [RandomLogit]
