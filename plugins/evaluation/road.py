"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022):
remove a growing fraction of the pixels in the order of the map and fill them
by noisy linear imputation (see support/imputation.py), which leaks far less
of the removed shape to the model than a constant fill; watch the class score.

Definition choices:
- fractions 1/(steps+1) … steps/(steps+1) (default 9 steps: 10 % … 90 %;
  100 % removed would leave nothing to impute from);
- ``order`` morf removes the most relevant pixels first (a faithful map makes
  the score fall: lower is better), lerf the least relevant first (higher is
  better); ties keep reading order;
- imputation in normalized input space, each channel alike, Gaussian noise of
  standard deviation ``noise`` (the paper's 0.01 is in [0, 1] pixel units;
  here it is scaled by each channel's std so it means the same) added to the
  imputed pixels, seeded by ``seed`` and the image's name;
- per image the score is the mean over the fractions of the target class's
  softmax probability (``--score logit`` for the logit). The paper reports
  accuracy over a dataset: whether each imputed image's top-1 is still the
  class is kept per fraction in the extras ("kept").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores, PerturbationParams, hookimpl, param, select_scores

from cnnviz_plugins.evaluation.support.baselines import image_rng
from cnnviz_plugins.evaluation.support.imputation import impute
from cnnviz_plugins.evaluation.support.ordered_replacement import relevance_ranks


@dataclasses.dataclass
class RoadParams(PerturbationParams):
    order: str = param("morf", "morf: most relevant pixels removed first; lerf: least relevant first", choices=("morf", "lerf"))
    steps: int = param(9, "fractions removed: 1/(steps+1) ... steps/(steps+1)", minimum=1)
    noise: float = param(0.01, "standard deviation of the noise added to imputed pixels, in [0, 1] pixel units", minimum=0.0)
    seed: int = param(0, "seed of the noise (with each image's name)")


class Road(Metric):
    """ROAD (Rong et al. 2022): class score as pixels are removed in map order and filled by noisy linear imputation; MoRF: lower is better."""

    name = "road"
    Params = RoadParams
    requires = frozenset({"forward"})
    higher_is_better = False
    curve_axes = {"road": ("fraction of pixels removed", "class score")}

    def __init__(self, adapter, params=None, scheduler=None):
        super().__init__(adapter, params, scheduler)
        self.higher_is_better = self.params.order == "lerf"

    def fractions(self) -> np.ndarray:
        return np.arange(1, self.params.steps + 1) / (self.params.steps + 1)

    def imputed(self, batch: MetricBatch) -> np.ndarray:
        """(b * steps, 3, H, W): each image at each fraction removed, imputed."""
        p = self.params
        maps = batch.maps if p.order == "morf" else -np.asarray(batch.maps)
        ranks, units = relevance_ranks(maps)
        std = np.asarray(self.adapter.config.std, dtype=np.float64).reshape(3, 1)
        images = []
        for image, rank, name in zip(batch.inputs, ranks, batch.names):
            rng = image_rng(p.seed, name, "road")
            for fraction in self.fractions():
                removed = rank < int(round(fraction * units))
                noisy = impute(image, removed, 0.0)
                if p.noise > 0:  # the noise in pixel units, divided by each channel's std
                    noisy[:, removed] += (rng.normal(0.0, p.noise, size=(3, int(removed.sum()))) / std).astype(np.float32)
                images.append(noisy)
        return np.stack(images)

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        inputs = self.imputed(batch)
        steps = self.params.steps
        classes = np.repeat(np.asarray(batch.classes, dtype=np.int64), steps)
        logits = self.forward.logits_of(len(inputs), lambda lo, hi, device: inputs[lo:hi])
        scores = select_scores(logits, classes, self.params.score).astype(np.float64).reshape(len(batch), steps)
        kept = (logits.argmax(axis=1) == classes).reshape(len(batch), steps)
        return MetricScores(scores.mean(axis=1), curves={"road": scores}, curve_x={"road": self.fractions()},
                            extras={"kept": kept})


@hookimpl
def cnnviz_methods():
    return [Road]
