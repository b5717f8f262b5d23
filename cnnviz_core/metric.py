"""Evaluation metrics: the fourth kind of plugin. A metric scores the maps of
one attribution method (per image, with curves where it has them) so that
methods can be compared on one model: ``cnnviz evaluate`` runs every method
against every metric and writes a leaderboard.

A metric is a :class:`Metric` subclass, contributed like any method through
the ``cnnviz_methods`` hook of a plugin module named by an entry point in the
``cnnviz`` group, with ``kind = "metric"``. It has:

- ``name`` (registry name), ``requires`` (capabilities: a metric that only
  perturbs inputs needs ``forward`` and runs on ONNX models too), ``Params``
  (a :class:`MetricParams` dataclass made with :func:`cnnviz_core.param`);
- ``higher_is_better``; ``references``: the model-free reference maps
  reported beside the methods so that a score means something (``random``,
  ``uniform``, ``sobel``);
- :meth:`Metric.evaluate`: one :class:`MetricBatch` in, one
  :class:`MetricScores` out. The driver (:func:`cnnviz_core.evaluate`) does the
  batching over images, the references, the store and the leaderboard.

Perturbation metrics get their forward scores from ``self.forward`` (a
:class:`~cnnviz_core.metric_forward.ForwardScores`): every perturbed input of
every image of a batch goes through the adapter's fastest forward runner in
full batches, built lazily so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np

from .errors import InputError
from .method import Method, MethodParams, param

KIND = "metric"
REFERENCES = ("random", "uniform", "sobel")  # the reference maps the driver can make (see evaluation/references.py)


@dataclasses.dataclass
class MetricParams(MethodParams):
    """Parameters every metric has (``batch_size``: images per evaluate call)."""


@dataclasses.dataclass
class PerturbationParams(MetricParams):
    """Parameters of metrics that watch the model's score under perturbed inputs."""

    score: str = param("prob", "the model output watched: the target's softmax probability or its logit",
                       choices=("prob", "logit"))
    runtime: str = param("auto", "forward runner: auto times the model's runners on large jobs and keeps the fastest; "
                                 "default uses the model's own first runner", choices=("auto", "default"))


@dataclasses.dataclass
class MetricBatch:
    """What a metric scores: a batch of inputs and one method's maps of them."""

    inputs: np.ndarray  # (b, 3, H, W) float32, normalized for the model
    maps: np.ndarray  # (b, H, W) float32: the evaluated method's raw maps
    classes: np.ndarray  # (b,) int64: the class each map explains
    names: list[str]  # the inputs' names
    method: str  # the evaluated method, or "reference:random" / "reference:uniform" / "reference:sobel"
    # Maps of the same method (same parameters) for other inputs or classes:
    # explain(inputs (n, 3, H, W), classes (n,)) -> (n, H, W). For metrics that
    # re-run the method (sensitivity, randomization, random logit); it runs on
    # the adapter as it is at call time (inside adapter.with_weights too).
    explain: Callable[[np.ndarray, np.ndarray], np.ndarray]
    sources: list[str | None] = dataclasses.field(default_factory=list)  # the image file each input came from, if any
    annotations: str | None = None  # the boxes JSON or masks folder the user gave (localization metrics)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclasses.dataclass
class MetricScores:
    """What :meth:`Metric.evaluate` returns for one batch."""

    scores: np.ndarray  # (b,) one number per image; NaN where it is undefined
    curves: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (b, k) y values
    curve_x: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (k,) x values, shared by images
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per-image arrays, first axis b

    def check(self, metric: str, count: int) -> "MetricScores":
        """The shapes the driver relies on; a plugin bug becomes a clear error."""
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(scores) != count:
            raise ValueError(f"metric {metric!r} returned {len(scores)} scores for {count} images")
        curves = {k: np.asarray(v, dtype=np.float64) for k, v in self.curves.items()}
        for name, curve in curves.items():
            x = self.curve_x.get(name)
            if curve.ndim != 2 or len(curve) != count or x is None or np.shape(x) != (curve.shape[1],):
                raise ValueError(f"metric {metric!r}: curve {name!r} must be (images, k) with curve_x[{name!r}] of length k")
        return MetricScores(scores, curves, {k: np.asarray(v, dtype=np.float64) for k, v in self.curve_x.items()},
                            {k: np.asarray(v) for k, v in self.extras.items()})


@dataclasses.dataclass
class MetricResult:
    """One metric over all images for one method (or reference)."""

    metric: str
    method: str
    names: list[str]
    scores: np.ndarray  # (N,)
    summary: dict[str, float]  # mean, std, sem, n (NaN scores left out), median
    higher_is_better: bool
    curves: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    curve_x: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def summarize(scores: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, standard error, median and count of the finite scores."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n = len(finite)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "sem": float("nan"), "median": float("nan"), "n": 0}
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    return {"mean": float(finite.mean()), "std": std, "sem": std / np.sqrt(n), "median": float(np.median(finite)), "n": n}


class Metric(Method):
    """Scores an attribution method's maps. Subclasses implement :meth:`evaluate`."""

    kind = KIND
    Params = MetricParams
    batch_hint = 8
    higher_is_better: ClassVar[bool] = True
    # The reference maps reported beside the methods (a subset of REFERENCES).
    references: ClassVar[tuple[str, ...]] = ("random", "uniform", "sobel")
    # True when the metric calls batch.explain (re-runs the method): then maps
    # read from a dataset-run store are not enough, the method must be runnable.
    reruns_method: ClassVar[bool] = False
    # Axis labels of each curve: name -> (x label, y label), for the plots.
    curve_axes: ClassVar[dict[str, tuple[str, str]]] = {}

    def setup(self) -> None:
        """Checks and preparation once, before any batch; errors leave nothing written."""

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        raise NotImplementedError

    @property
    def forward(self):
        """Batched forward scores through the fastest runner (built on first use)."""
        if "_forward" not in self.__dict__:
            from .metric_forward import ForwardScores

            self._forward = ForwardScores(self.adapter, score=getattr(self.params, "score", "logit"),
                                          runtime=getattr(self.params, "runtime", "auto"), metadata=self.metadata)
        return self._forward

    def summarize(self, scores: np.ndarray) -> dict[str, float]:
        return summarize(scores)

    def run(self, *args, **kwargs):
        raise InputError(f"{self.name} is an evaluation metric, not a method to run on images: use "
                         f"`cnnviz evaluate --metrics {self.name} --methods ...` or cnnviz_core.evaluate(...)")
