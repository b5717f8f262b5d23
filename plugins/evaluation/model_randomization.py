"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity checks
for saliency maps"): a map that explains the model must change when the
model's weights are randomized. The method is re-run with the weights of
more and more layers (``cascading``, from the top) or of one layer at a time
(``independent``) replaced by random ones, and each map compared with the
original map by Spearman's rank correlation and SSIM.

Per image: the mean rank correlation over the randomization steps (lower is
better: 0 means the map no longer resembles the trained model's); curves
``spearman`` and ``ssim`` per step, x the layer's depth from the top; the
layer names in the metric's metadata (``layers``).

Definition choices (see :mod:`cnnviz_plugins.evaluation.support.randomization`
and :mod:`~cnnviz_plugins.evaluation.support.rank_similarity`): the
convolution and linear weights are randomized (normal, each layer's own std,
seeded), biases and normalization kept; ``layers`` points spread evenly
from the top to the bottom layer (0: every layer); maps compared by
magnitude (``absolute``, Adebayo et al.'s main figures) — Spearman with
average ranks, SSIM of min-max scaled maps with scikit-image's defaults.

The model is run once per step for the whole batch, with its weights
swapped in by the adapter's ``with_weights``, which copies the originals back
bit for bit — on success and on error, also when the method raises mid-way.
A cascade nests the swaps: each step swaps in only the layers it adds to the
prefix already randomized, and every layer is restored once, at the end. Needs the ``weights`` capability (and whatever the
evaluated method needs: gradient methods only on torch models). Each step is
a new model to a method that caches per weights: occlusion on a torch model
in its ``auto`` runtime may export an ONNX copy per step (into cnnviz's
cache); ``--set occlusion.runtime=torch`` avoids that."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import numpy as np

from cnnviz_core import Capability, MethodError, Metric, MetricBatch, MetricParams, MetricScores, hookimpl, param

from cnnviz_plugins.evaluation.support.randomization import MODES, plan, random_weight
from cnnviz_plugins.evaluation.support.rank_similarity import spearman, ssim


@dataclasses.dataclass
class ModelRandomizationParams(MetricParams):
    mode: str = param("cascading", "cascading: randomize layers from the top down, adding one per step; "
                                   "independent: one layer at a time", choices=MODES)
    layers: int = param(8, "randomization points, spread evenly from the top layer to the bottom one "
                           "(0: every convolution and linear layer)", minimum=0)
    seed: int = param(0, "seed of the random weights")
    absolute: bool = param(True, "compare |map| (Adebayo et al.'s main comparison) instead of the signed maps")


class ModelRandomization(Metric):
    """Model randomization (Adebayo et al. 2018): rank correlation of maps before and after randomizing weights; lower is better."""

    name = "model_randomization"
    Params = ModelRandomizationParams
    requires = frozenset({Capability.WEIGHTS})
    higher_is_better = False
    reruns_method = True
    references = ("sobel",)
    curve_axes = {"spearman": ("weight layers from the top", "rank correlation with the original map"),
                  "ssim": ("weight layers from the top", "SSIM with the original map")}

    def setup(self) -> None:
        layers = self.adapter.weight_layers()
        if not layers:
            raise MethodError(self.name, f"model {self.adapter.name!r} has no convolution or linear layer to randomize")
        names = [layer.name for layer in layers]
        self.steps = plan(names, self.params.layers, self.params.mode)
        needed = {name for step in self.steps for name in step.randomized}
        # drawn once: a cascade adds layers to those already randomized
        self.random = {layer.name: random_weight(layer.weight, self.params.seed, position)
                       for position, layer in enumerate(layers) if layer.name in needed}
        self.metadata["layers"] = [step.layer for step in self.steps]
        self.metadata["mode"] = self.params.mode

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        if "steps" not in self.__dict__:
            self.setup()
        absolute = self.params.absolute
        ranks = np.empty((len(batch), len(self.steps)))
        similarity = np.empty_like(ranks)
        cascading = self.params.mode == "cascading"
        with contextlib.ExitStack() as swaps:  # unwound in reverse on exit or error: the weights back bit for bit
            for j, step in enumerate(self.steps):
                if not cascading:
                    swaps.close()  # independent: only this step's layer is random
                # a cascade keeps the layers above randomized and swaps in just the ones this step adds
                swaps.enter_context(self.adapter.with_weights({name: self.random[name] for name in step.added}))
                maps = np.asarray(batch.explain(batch.inputs, batch.classes))
                for i, (original, randomized) in enumerate(zip(batch.maps, maps)):
                    ranks[i, j] = spearman(original, randomized, absolute)
                    similarity[i, j] = ssim(original, randomized, absolute)
        depth = np.asarray([step.depth for step in self.steps], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an image whose maps were all constant: NaN
            scores = np.nanmean(ranks, axis=1)
        return MetricScores(scores, curves={"spearman": ranks, "ssim": similarity},
                            curve_x={"spearman": depth, "ssim": depth})


@hookimpl
def cnnviz_methods():
    return [ModelRandomization]
