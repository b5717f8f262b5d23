"""Weight magnitudes and global magnitude pruning (Han et al., "Learning both
Weights and Connections", 2015; "Deep Compression", 2016).

Per layer: a histogram of the weights and the fraction near zero, |w| below
``--threshold`` × the layer's standard deviation (Han et al. set their pruning
threshold as a quality parameter times the layer's std) or below an absolute
``--threshold``. Then one global threshold over all convolution and linear
weights — biases and batch-norm parameters are not pruned — removes the
smallest s % of them for each sparsity s, and the dataset is run through each
pruned model: the top-1 agreement with the unpruned model always, and the
accuracy when the dataset has labels.

The whole curve comes from one pass: the global thresholds are found once in
``setup``; for each batch and sparsity the model runs with the pruned weights
swapped in (the adapter's ``with_weights``: a torch module gets them copied in
and the originals back on exit, on error too; an ONNX model one session with
the pruned initializers, built for the block and dropped). (An ONNX export
usually folds batch norm into the convolutions, so its weight magnitudes, and
hence its pruning, differ from the torch model's where there is batch norm.)"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, MethodWarning, hookimpl, param, plots

from cnnviz_plugins.analysis.pruning.magnitude import LayerStats, global_cuts, layer_sparsity, parse_sparsities, prune
from cnnviz_plugins.analysis.pruning.plots import histogram_grid


@dataclasses.dataclass
class PruningParams(AnalysisParams):
    sparsities: str = param("0,10,20,30,40,50,60,70,80,90,95", "global sparsities to test, in percent, separated by "
                                                               "commas; 0 (the unpruned model) is always included")
    threshold: float = param(0.1, "a weight is near zero when |w| < threshold × its layer's std "
                                  "(or < threshold itself with --threshold-scale absolute)", minimum=0)
    threshold_scale: str = param("std", "what --threshold is measured in: each layer's weight std, or absolute units",
                                 choices=("std", "absolute"))
    bins: int = param(81, "histogram bins per layer, symmetric around 0", minimum=2)


class Pruning(AnalysisMethod):
    """Weight histograms per layer, and accuracy / agreement vs global magnitude-pruning sparsity."""

    name = "pruning"
    requires = frozenset({Capability.FORWARD, Capability.WEIGHTS})
    Params = PruningParams
    uses_dataset = True
    needs_logits = True
    state_attributes = ("_agree", "_correct", "_seen", "_labelled")
    demo_params = {"sparsities": "0,50,80,95"}

    @classmethod
    def check_params(cls, params) -> None:
        parse_sparsities(params.sparsities)

    def setup(self) -> None:
        self.sparsities = parse_sparsities(self.params.sparsities)
        self.layers = [layer for layer in self.adapter.weight_layers() if layer.kind in ("conv", "linear")]
        if not self.layers:
            raise self.error(f"model {self.adapter.name!r} has no convolution or linear weights to prune")
        weights = [layer.weight for layer in self.layers]
        p = self.params
        self.stats = [LayerStats.of(layer.name, w, p.threshold, p.threshold_scale, p.bins) for layer, w in zip(self.layers, weights)]
        self.cuts = global_cuts(weights, self.sparsities)
        self.total = sum(w.size for w in weights)
        self.layer_sparsity = layer_sparsity(weights, self.cuts)
        self._label_map = self._class_of_label()
        self._agree = np.zeros(len(self.sparsities), np.int64)
        self._correct = np.zeros(len(self.sparsities), np.int64)
        self._seen = 0
        self._labelled = 0

    def _class_of_label(self) -> np.ndarray | None:
        """Dataset label → model class (-1: none). Class folders are matched to
        the model's labels by name (case-insensitive), or read as class numbers;
        without class names, labels are the model's class numbers."""
        names = self.dataset.class_names if self.dataset is not None else None
        classes = self.adapter.num_classes
        if names is None:
            return None
        lookup = {label.lower(): i for i, label in enumerate(self.adapter.labels or ())}
        mapped = []
        for name in names:
            index = lookup.get(str(name).lower())
            if index is None and str(name).isdigit() and int(name) < classes:
                index = int(name)
            mapped.append(-1 if index is None else index)
        unknown = [str(n) for n, m in zip(names, mapped) if m < 0]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            effect = ("only the agreement with the unpruned model is measured" if len(unknown) == len(names)
                      else "their images count for the agreement only")
            warnings.warn(f"pruning: {len(unknown)} class folder(s) of the dataset ({shown}) name no class of the model "
                          f"(by label or number); {effect}", MethodWarning)
        return np.asarray(mapped, np.int64)

    def _model_classes(self, labels: np.ndarray) -> np.ndarray:
        if self._label_map is None:
            return np.where((labels >= 0) & (labels < self.adapter.num_classes), labels, -1)
        return np.where(labels >= 0, self._label_map[np.clip(labels, 0, None)], -1)

    def consume(self, batch, activations, logits) -> None:
        reference = logits.argmax(axis=1)
        truth = self._model_classes(batch.labels)
        labelled = truth >= 0
        for i, cut in enumerate(self.cuts):
            predicted = reference if cut.count == 0 else self._pruned_logits(batch.inputs, cut).argmax(axis=1)
            self._agree[i] += int(np.sum(predicted == reference))
            self._correct[i] += int(np.sum(predicted[labelled] == truth[labelled]))
        self._seen += len(reference)
        self._labelled += int(labelled.sum())

    def merge(self, state) -> None:
        """Another worker's counts added: counts over disjoint images sum."""
        if np.shape(state["_agree"]) != self._agree.shape:
            raise self.error("a partial state of other sparsities cannot be merged")
        self._agree = self._agree + np.asarray(state["_agree"], np.int64)
        self._correct = self._correct + np.asarray(state["_correct"], np.int64)
        self._seen += int(state["_seen"])
        self._labelled += int(state["_labelled"])

    def _pruned_logits(self, inputs: np.ndarray, cut) -> np.ndarray:
        # pruned copies made before the swap: on a torch model a layer's array shows the live weights
        pruned = {layer.name: prune(layer.weight, cut, index) for index, layer in enumerate(self.layers)}
        with self.adapter.with_weights(pruned):
            parts = self.scheduler.map_batches(lambda a, b: self.adapter.logits(inputs[a:b]), len(inputs), len(inputs),
                                               desc="pruning-forward")
        return np.concatenate(parts)

    def finish(self) -> Analysis:
        agreement = self._agree / max(self._seen, 1)
        accuracy = self._correct / self._labelled if self._labelled else np.full(len(self.sparsities), np.nan)
        curves = {"top-1 agreement with the unpruned model": agreement}
        if self._labelled:
            curves = {"accuracy": accuracy, **curves}
        curve = plots.line_plot(curves, title=f"global magnitude pruning ({self.total:,} conv + linear weights)",
                                xlabel="sparsity (%)", ylabel="fraction of images", x=self.sparsities)
        near_zero = f"|w| < {self.params.threshold:g}" + (" std of its layer" if self.params.threshold_scale == "std" else "")
        levels = [
            {"sparsity": float(s), "accuracy": float(a) if self._labelled else None, "agreement": float(g),
             "threshold": cut.threshold, "pruned": cut.count}
            for s, a, g, cut in zip(self.sparsities, accuracy, agreement, self.cuts)
        ]
        return Analysis(
            arrays={
                "sparsities": self.sparsities, "accuracy": accuracy, "agreement": agreement,
                "thresholds": np.asarray([cut.threshold for cut in self.cuts]),
                "layer_sparsity": self.layer_sparsity,
                "fraction_below": np.asarray([s.fraction_below for s in self.stats]),
                "histogram_counts": np.stack([s.histogram for s in self.stats]),
                "histogram_edges": np.stack([s.edges for s in self.stats]),
            },
            pictures={"curve": curve,
                      "histograms": histogram_grid(self.stats, f"weight histograms per layer; orange: near 0, {near_zero}")},
            facts={
                "layers": [s.fact() for s in self.stats], "sparsities": levels, "weights": self.total,
                "images": self._seen, "labelled_images": self._labelled,
                "scope": "one global magnitude threshold over all convolution and linear weights; biases and batch norm kept",
                "near_zero": near_zero,
            },
        )


@hookimpl
def cnnviz_methods():
    return [Pruning]
