"""What the localization metrics share: each image's object region (boxes or
masks, see :mod:`~cnnviz_plugins.evaluation.support.regions`) at the model's
input size, and one score per map and region."""

from __future__ import annotations

import os

import numpy as np

from cnnviz_core import InputError, Metric, MetricBatch, MetricScores, MethodError

from cnnviz_plugins.evaluation.support import regions


class RegionMetric(Metric):
    """A metric of one map against one region; subclasses give :meth:`score`."""

    references = ("random", "sobel")

    def score(self, saliency: np.ndarray, region: np.ndarray) -> float:
        raise NotImplementedError

    def regions(self, batch: MetricBatch) -> np.ndarray:
        # the boxes JSON is read once per run, not per batch
        cache = self.__dict__.setdefault("_boxes", {})
        annotations = batch.annotations
        boxes = None
        if annotations is not None and not os.path.isdir(annotations):
            if annotations not in cache:
                cache[annotations] = regions.read_boxes(annotations)
            boxes = cache[annotations]
        sources = batch.sources if batch.sources else [None] * len(batch)
        return regions.image_regions(sources, tuple(batch.maps.shape[-2:]), annotations, boxes)

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        areas = self.regions(batch)
        scores = []
        for name, saliency, region in zip(batch.names, batch.maps, areas):
            if not region.any():
                raise InputError(f"{self.name}: the box or mask of {name!r} covers no pixel of the model's input")
            try:
                scores.append(self.score(saliency, region))
            except ValueError as error:
                raise MethodError(self.name, f"image {name!r}: {error}") from None
        return MetricScores(np.asarray(scores, dtype=np.float64), extras={"region_fraction": areas.mean(axis=(1, 2))})
