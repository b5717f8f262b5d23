"""The model adapter contract: one wrapped model, its capabilities, layers,
preprocessing and batched scores, and every question a method asks about the
model. Adapters are contributed by plugins.

A capability means exactly the calls it allows:

- ``forward``: :meth:`~ModelAdapter.logits`, :meth:`~ModelAdapter.scores`,
  :meth:`~ModelAdapter.forward_runners`, :meth:`~ModelAdapter.weights_digest`.
- ``activations``: :meth:`~ModelAdapter.activations`,
  :meth:`~ModelAdapter.logits_and_activations`, and the questions answered
  from them: :meth:`~ModelAdapter.layer_shapes`,
  :meth:`~ModelAdapter.stage_outputs`, :meth:`~ModelAdapter.mid_level_layer`,
  :meth:`~ModelAdapter.classifier_input_layer`,
  :meth:`~ModelAdapter.receptive_field`.
- ``weights``: :meth:`~ModelAdapter.weights`,
  :meth:`~ModelAdapter.weight_layers`, :meth:`~ModelAdapter.weight_layer`,
  :meth:`~ModelAdapter.with_weights`; with ``activations`` too,
  :meth:`~ModelAdapter.cam_head`.
- ``gradients``: ``adapter.module`` is a ``torch.nn.Module`` that autograd
  runs through, ``adapter.tensor(batch)`` the batch as a tensor on the
  model's device, ``adapter.get_layer(name)`` a layer's submodule. Only a
  method that requires ``gradients`` touches these.

A method asks these questions and never branches on which adapter it got.
Where this class can answer from the capabilities alone (layer shapes, stages
and receptive fields through ``activations``; weight layers by shape through
``weights``) it does; built-in adapters answer better from their model's
structure. A question an adapter cannot answer raises
:class:`~cnnviz_core.errors.AdapterError` saying what it lacks."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from . import images, model_probes
from .capabilities import Capability
from .config import PreprocessConfig
from .errors import AdapterError, InputError, LayerNotFoundError
from .model_facts import (
    KIND_WORDS,
    CamHead,
    ForwardRunner,
    ReceptiveField,
    WeightLayer,
    WeightLayerNotFoundError,
    listing,
)


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
    # Whether config.input_size is the model's own (timm's pretrained config, a
    # sidecar, the graph, the user's option) rather than a default guess for a
    # module that takes any size: only then is a normalized batch of another
    # size refused.
    input_size_known: bool = True

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

    def feature_layout(self, layer: str):
        """How ``layer``'s output becomes a (B, C, h, w) feature map: a
        :class:`cnnviz_core.feature_layout.FeatureLayout` for token (B, N, C)
        and channels-last (B, h, w, C) layers, None for a layer whose output
        already is a map (or is no map at all). :meth:`activations`,
        :meth:`logits_and_activations` and :meth:`layer_shapes` already give
        such layers as maps; the layout is for a method that reads the
        module's output itself (hooks, gradients: ``toolkit.gradient_root``
        takes it). Default: None."""
        return None

    def fixed_input_size(self) -> tuple[int, int] | None:
        """The only input size (H, W) the model accepts (a transformer with a
        fixed patch grid), or None when it takes others. Methods that resize
        their images (DeepDream's octaves) refuse such a model. Default: None."""
        return None

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

    def _require(self, capability: Capability, question: str) -> None:
        if capability not in self.capabilities:
            raise AdapterError(self.name, question, f"it lacks the {capability} capability")

    def _remembered(self, question: str, answer: Callable[[], Any]) -> Any:
        """An answer computed once per input size (the model's structure does not change under a run)."""
        memo = self.__dict__.setdefault("_answers", {})
        key = (question, tuple(self.config.input_size))
        if key not in memo:
            memo[key] = answer()
        return memo[key]

    # -- running (forward) -------------------------------------------------
    def to(self, device: str) -> "ModelAdapter":
        self.device = device
        return self

    @abc.abstractmethod
    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) normalized float32 → (B, classes) float32 logits."""

    def scores(self, inputs: np.ndarray, classes: np.ndarray, score: str = "logit") -> np.ndarray:
        """The score of one class per input (logit or softmax probability)."""
        return select_scores(self.logits(inputs), classes, score)

    def forward_runners(self) -> dict[str, Callable[[], ForwardRunner]]:
        """Ways to run batched forward passes, by name, for methods that run
        many (occlusion times them and keeps the fastest). Each entry builds
        its runner when called: a build may be costly (an export) and may
        raise; the first entry is the one to use without timing. Default:
        this adapter's own :meth:`logits`."""
        label = f"{self.kind or type(self).__name__} adapter"
        return {"adapter": lambda: ForwardRunner(label, lambda batch: np.asarray(self.logits(batch), dtype=np.float32))}

    def weights_digest(self) -> str | None:
        """A digest of what the model computes with (weights and buffers, or
        the model file): equal digests, equal outputs. None when this adapter
        cannot tell (then nothing may be reused across models by it).
        Default: a digest of :meth:`weights` when the adapter has them."""
        if Capability.WEIGHTS not in self.capabilities:
            return None
        return model_probes.digest_of_arrays(self.weights())

    @contextlib.contextmanager
    def session(self):
        """Context a method runs in; the torch adapter enters eval mode here and
        restores every temporary change on exit."""
        yield self

    def display_images(self, inputs: np.ndarray) -> np.ndarray:
        return images.denormalize(inputs, self.config)

    def prepare(self, inputs, normalized: bool | None = None) -> tuple[np.ndarray, list[str]]:
        """Paths, ``skimage:NAME``, PIL images or arrays → normalized batch and
        input names (see :func:`cnnviz_core.images.prepare_inputs` for how
        arrays are taken and what ``normalized`` declares)."""
        batch, names = images.prepare_inputs(inputs, self.config, normalized, self.input_size_known)
        return batch, names

    # -- activations ---------------------------------------------------------
    def activations(self, inputs: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The outputs of the named layers for a batch, by name, as numpy arrays
        (capability ``activations``). A name is one of :meth:`layers`; an ONNX
        adapter also takes a tensor name. Unknown names raise LayerNotFoundError."""
        return self.logits_and_activations(inputs, names)[1]

    def logits_and_activations(self, inputs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The logits and the named layers' outputs from one forward pass."""
        raise AdapterError(self.name, "logits_and_activations()", "it does not expose intermediate layers (no activations capability)")

    def layer_shapes(self, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """Each named layer's output shape for one input (batch dimension 1).
        Default: one forward pass of a blank image through :meth:`activations`."""
        self._require(Capability.ACTIVATIONS, "layer_shapes()")
        return model_probes.measured_shapes(self, list(names))

    def stage_outputs(self) -> list[str]:
        """The outputs of the model's stages, shallow to deep: a stage is the
        run of layers at one spatial resolution, its output the feature map
        handed to the next (VGG's conv1 … conv5 blocks). The default layers
        of representation-matching methods (inversion, style transfer).
        Default: the last layer at each resolution, from :meth:`layer_shapes`."""
        self._require(Capability.ACTIVATIONS, "stage_outputs()")
        return self._remembered("stages", lambda: model_probes.stages_by_resolution(
            self.layers(), self.layer_shapes(self.layers())))

    def mid_level_layer(self) -> str:
        """The last-but-one stage output: parts of objects, not edges and not
        whole classes (DeepDream's default; inversion's and style transfer's
        content layer)."""
        return model_probes.middle(self.stage_outputs())

    def classifier_input_layer(self) -> str | None:
        """The layer whose output the classifier reads (the pooled features:
        timm's ``global_pool``, torchvision's ``avgpool``), or None when the
        adapter finds no linear classifier fed by one layer. Default: None."""
        self._require(Capability.ACTIVATIONS, "classifier_input_layer()")
        return None

    def receptive_field(self, layer: str, verify: bool = True) -> ReceptiveField:
        """The input pixels that can change each position of ``layer``'s
        (B, C, h, w) output. Default: measured by perturbing input rows and
        columns through :meth:`activations` (``verify`` has nothing to check);
        built-in adapters compute it from the model's ops and, with
        ``verify``, check it against perturbations outside a few units' boxes."""
        self._require(Capability.ACTIVATIONS, "receptive_field()")
        self.check_layer(layer)
        model_probes.layer_map_shape(self, layer)
        return model_probes.probed_receptive_field(self, layer)

    # -- weights -------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """The model's parameters (ONNX: initializers) by name (capability ``weights``)."""
        raise AdapterError(self.name, "weights()", "it does not expose its weights (no weights capability)")

    def weight_layers(self) -> list[WeightLayer]:
        """The convolution and linear layers with their weights, in model
        order. Default: read off :meth:`weights` by shape (4-D kernels are
        convolutions, 2-D matrices linear layers)."""
        self._require(Capability.WEIGHTS, "weight_layers()")
        return model_probes.weight_layers_by_shape(self.weights())

    def weight_layer(self, name: str, kind: str) -> WeightLayer:
        """The layer of ``kind`` ("conv" or "linear") that answers to
        ``name``. A real layer of another kind is an InputError, an unknown
        name a LayerNotFoundError; both list the layers that would do."""
        layers = self.weight_layers()
        chosen = [layer for layer in layers if layer.kind == kind]
        for layer in chosen:
            if layer.answers_to(name):
                return layer
        names = [layer.name for layer in chosen]
        other = next((layer for layer in layers if layer.answers_to(name)), None)
        if other is not None or name in self.layers():
            word = KIND_WORDS.get(kind, kind)
            what = f"a {KIND_WORDS.get(other.kind, other.kind)} layer" if other is not None else f"not a {word} layer"
            raise InputError(f"layer {name!r} is {what}; give one of the {word} layers: {listing(names)}")
        raise WeightLayerNotFoundError(name, kind, names)

    @contextlib.contextmanager
    def with_weights(self, overrides: Mapping[str, np.ndarray]) -> Iterator["ModelAdapter"]:
        """Run the model with some layers' weights replaced: ``overrides``
        maps :meth:`weight_layers` names to arrays of the same shape. Inside
        the block every forward (``logits``, ``activations``) uses them; on
        exit, on success or error, the model is back bit for bit. An adapter
        with the ``weights`` capability implements this."""
        self._require(Capability.WEIGHTS, "with_weights()")
        raise AdapterError(self.name, "with_weights()", "it does not implement running with replaced weights "
                           "(an adapter with the weights capability overrides ModelAdapter.with_weights)")
        yield self  # pragma: no cover - a generator, so that the call is a context manager

    def check_overrides(self, overrides: Mapping[str, np.ndarray]) -> dict[str, str]:
        """For :meth:`with_weights` implementations: each override's layer
        name → the adapter's own name of that weight (``WeightLayer.weight_name``),
        every name and shape checked."""
        table = self.weight_table()
        names = {}
        for name, array in overrides.items():
            if name not in table:
                raise WeightLayerNotFoundError(name, "weight", [key for key, (own, _) in table.items() if key != own])
            weight_name, shape = table[name]
            if tuple(np.shape(array)) != shape:
                raise InputError(f"with_weights: layer {name!r} has weights of shape {shape}, got {tuple(np.shape(array))}")
            names[name] = weight_name
        return names

    def weight_table(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every name a weight layer answers to → (its weight's own name, its
        shape). Default: from :meth:`weight_layers`; an adapter that can list
        them without reading the values overrides it."""
        return {alias: (layer.weight_name, layer.shape) for layer in self.weight_layers()
                for alias in (layer.name, *layer.aliases)}

    # -- activations and weights -----------------------------------------------
    def cam_head(self) -> CamHead:
        """The classifier head when it is global average pooling followed by
        one linear layer (CAM's condition); otherwise a MethodError saying
        why, that suggests Grad-CAM. Default: found numerically from
        :meth:`weight_layers` and :meth:`logits_and_activations`."""
        self._require(Capability.ACTIVATIONS, "cam_head()")
        self._require(Capability.WEIGHTS, "cam_head()")
        return model_probes.cam_head_by_probe(self)


def select_scores(logits: np.ndarray, classes: np.ndarray, score: str = "logit") -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(classes))
    if score == "prob":
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return probs[rows, classes].astype(np.float32)
    return logits[rows, classes].astype(np.float32)
