"""Analysis methods look at a model across a dataset, or at its weights (top
activating patches, filters, t-SNE, pruning).

A dataset analysis is a consumer of one shared streaming pass
(:mod:`cnnviz_core.analysis_pass`): it names the layers it needs, receives each
batch with those layers' activations (computed once for all analyses of the
pass), keeps bounded state, and builds its result at the end. Its state can be
saved between batches so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from .dataset import Dataset, DatasetBatch
from .method import Method, MethodParams
from .results_analysis import AnalysisResult


@dataclasses.dataclass
class AnalysisParams(MethodParams):
    pass


@dataclasses.dataclass
class Analysis:
    """What ``finish`` returns: named arrays, pictures (RGB uint8 (H, W, 3)),
    and JSON-able facts."""

    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


class AnalysisMethod(Method):
    """Subclasses set ``uses_dataset`` (False for weight-only analyses such as
    filters) and implement :meth:`layers_needed`, :meth:`consume` and
    :meth:`finish`. State that must survive an interruption lives in the
    attributes listed in ``state_attributes``."""

    kind = "analysis"
    Params = AnalysisParams
    uses_dataset: ClassVar[bool] = True
    needs_logits: ClassVar[bool] = False
    state_attributes: ClassVar[tuple[str, ...]] = ()
    batch_hint = 32

    def __init__(self, adapter, params=None, scheduler=None):
        super().__init__(adapter, params, scheduler)
        self.dataset: Dataset | None = None

    def setup(self) -> None:
        """Checks (layer names, model structure) before any batch; errors here
        leave nothing written."""

    def layers_needed(self) -> list[str]:
        """Layers whose activations this analysis reads from each batch."""
        return []

    def consume(self, batch: DatasetBatch, activations: dict[str, np.ndarray], logits: np.ndarray | None) -> None:
        """Fold one batch into the state (bounded memory)."""

    def finish(self) -> Analysis:
        raise NotImplementedError

    # -- resumable state -----------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The attributes in ``state_attributes``: numpy arrays, lists, dicts,
        numbers or strings (checkpoints are .npz + JSON, never pickles)."""
        return {name: getattr(self, name) for name in self.state_attributes}

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def merge(self, state: dict[str, Any]) -> None:
        """Fold in the :meth:`state` of another instance (same parameters, set
        up alike) that consumed other items of the dataset, so that partial
        states from parallel workers combine into the state of one pass over
        all items. An analysis that implements it runs data-parallel
        (``workers=``); the order of merges must not change the result."""
        raise NotImplementedError(f"{self.name} cannot combine partial states, so it runs in one process")

    def result(self, analysis: Analysis, metadata: dict[str, Any]) -> AnalysisResult:
        return AnalysisResult(
            method=self.name,
            model=self.adapter.describe(),
            params=dataclasses.asdict(self.params),
            arrays=analysis.arrays,
            pictures=analysis.pictures,
            facts=analysis.facts,
            metadata={**metadata, **self.metadata},
        )
