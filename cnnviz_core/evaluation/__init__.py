"""Evaluation of attribution methods by metrics: the driver behind
``cnnviz_core.evaluate`` and ``cnnviz evaluate``, the model-free reference
maps, the resumable per-chunk store and the leaderboard."""

from .driver import Evaluation, evaluate

__all__ = ["Evaluation", "evaluate"]
