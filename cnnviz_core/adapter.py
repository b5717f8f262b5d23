"""The model adapter contract: one wrapped model, its capabilities, layers,
preprocessing and batched scores. Adapters are contributed by plugins."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from . import images
from .capabilities import Capability
from .config import PreprocessConfig
from .errors import LayerNotFoundError


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A named model: ``factory(**opts)`` returns a ready adapter, offline."""

    name: str
    factory: Callable[..., "ModelAdapter"]
    description: str = ""
    plugin: str = ""


class ModelAdapter(abc.ABC):
    kind: ClassVar[str] = ""
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, name: str, config: PreprocessConfig, labels: Sequence[str] | None = None):
        self.name = name
        self.config = config
        self.labels = tuple(labels) if labels is not None else None
        self.device = "cpu"

    # -- loading -----------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def can_load(cls, spec: Any) -> bool:
        """Whether this adapter understands a model spec (string or object)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, spec: Any, **options) -> "ModelAdapter":
        """Build an adapter for the spec; raise ModelLoadError if it cannot."""

    # -- description -------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_classes(self) -> int: ...

    @abc.abstractmethod
    def layers(self) -> list[str]:
        """Names of the layers methods may target, in forward order."""

    @abc.abstractmethod
    def default_layer(self) -> str:
        """The last spatial feature layer: Grad-CAM's default."""

    def check_layer(self, layer: str) -> str:
        names = self.layers()
        if layer not in names:
            raise LayerNotFoundError(layer, names)
        return layer

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapter": self.kind,
            "capabilities": sorted(str(c) for c in self.capabilities),
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "device": self.device,
        }

    # -- running -----------------------------------------------------------
    def to(self, device: str) -> "ModelAdapter":
        self.device = device
        return self

    @abc.abstractmethod
    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) normalized float32 → (B, classes) float32 logits."""

    def activations(self, inputs: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The outputs of the named layers for a batch, by name, as numpy arrays
        (capability ``activations``). A name is one of :meth:`layers`; an ONNX
        adapter also takes a tensor name. Unknown names raise LayerNotFoundError."""
        return self.logits_and_activations(inputs, names)[1]

    def logits_and_activations(self, inputs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The logits and the named layers' outputs from one forward pass."""
        raise NotImplementedError(f"the {self.kind or type(self).__name__} adapter does not expose activations")

    def weights(self) -> dict[str, np.ndarray]:
        """The model's parameters (ONNX: initializers) by name (capability ``weights``)."""
        raise NotImplementedError(f"the {self.kind or type(self).__name__} adapter does not expose weights")

    def scores(self, inputs: np.ndarray, classes: np.ndarray, score: str = "logit") -> np.ndarray:
        """The score of one class per input (logit or softmax probability)."""
        return select_scores(self.logits(inputs), classes, score)

    @contextlib.contextmanager
    def session(self):
        """Context a method runs in; the torch adapter enters eval mode here and
        restores every temporary change on exit."""
        yield self

    def display_images(self, inputs: np.ndarray) -> np.ndarray:
        return images.denormalize(inputs, self.config)

    def prepare(self, inputs) -> tuple[np.ndarray, list[str]]:
        """Paths, PIL images or arrays → normalized batch and input names."""
        batch, names = images.prepare_inputs(inputs, self.config)
        return batch, names


def select_scores(logits: np.ndarray, classes: np.ndarray, score: str = "logit") -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(classes))
    if score == "prob":
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return probs[rows, classes].astype(np.float32)
    return logits[rows, classes].astype(np.float32)
