"""ONNX adapter: any .onnx file through onnxruntime. Gradient free: it offers
forward passes, intermediate tensors (exposed as extra graph outputs of a
modified copy of the model) and the initializers as weights, and answers the
contract's model questions from the graph (:mod:`cnnviz_adapters.onnx_model`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from cnnviz_core.adapter import ModelAdapter
from cnnviz_core.capabilities import Capability
from cnnviz_core.config import PreprocessConfig, config_from_metadata
from cnnviz_core.errors import InputError, LayerNotFoundError, MethodWarning, ModelLoadError
from cnnviz_core.model_facts import CamHead, ForwardRunner, ReceptiveField, WeightLayer
from cnnviz_core.model_probes import probed_receptive_field
from cnnviz_core import runtime_tuning

from . import geometry
from .onnx_model import cam_head, classifier_input, input_layout, receptive_field, shapes, stages, weight_layers

SIDECAR_SUFFIX = ".json"  # lite0.onnx → lite0.onnx.json


def sidecar_path(model_path: str) -> str:
    return model_path + SIDECAR_SUFFIX


def cuda_available() -> bool:
    """A CUDA device exists (asked of torch, which is installed anyway) and
    onnxruntime was built with the CUDA provider."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def providers_for(device: str) -> list:
    """onnxruntime's providers for a device. A CUDA device without a usable
    CUDA provider is an InputError; under ``--device auto`` the run catches it
    and falls back to the CPU with a warning (cnnviz_core.api.placed)."""
    if device.startswith("cuda"):
        if not cuda_available():
            raise InputError(f"device {device} asked for, but onnxruntime has no usable CUDA provider here "
                             "(install onnxruntime-gpu with its CUDA libraries, or use --device cpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxAdapter(ModelAdapter):
    kind = "onnx"
    capabilities = frozenset({Capability.FORWARD, Capability.ACTIVATIONS, Capability.WEIGHTS})
    max_cached_sessions = 4  # sessions with extra outputs kept, one per set of tensors

    def __init__(self, path: str, config: PreprocessConfig, labels: Sequence[str] | None = None, name: str | None = None):
        super().__init__(name or os.path.basename(path), config, labels)
        self.path = path
        self._session = None
        self._graph = None
        self._exposed: dict[tuple[str, ...], Any] = {}  # extra output names → session
        self._overrides: dict[str, np.ndarray] = {}  # initializer name → its value inside with_weights
        self.sidecar: dict = {}  # what the exporter wrote beside the file (config, labels, stages)
        self.device = "cpu"

    # -- loading -----------------------------------------------------------
    @classmethod
    def can_load(cls, spec: Any) -> bool:
        return isinstance(spec, (str, os.PathLike)) and os.fspath(spec).lower().endswith(".onnx")

    @classmethod
    def load(cls, spec: Any, **options) -> "OnnxAdapter":
        path = os.fspath(spec)
        if not os.path.isfile(path):
            raise ModelLoadError(f"ONNX model {path} does not exist")
        device = options.pop("device", None)
        labels = options.pop("labels", None)
        name = options.pop("name", None)
        output = options.pop("output", None)  # which graph output holds the logits (name or index); the first by default
        config_options = {k: options.pop(k) for k in ("input_size", "mean", "std", "interpolation") if k in options}
        if options:
            raise InputError(f"unknown model option(s) for an ONNX model: {', '.join(sorted(options))}")
        sidecar = _read_sidecar(path)
        adapter = cls(path, PreprocessConfig(), labels if labels is not None else sidecar.get("labels"), name or sidecar.get("name"))
        adapter.sidecar = sidecar
        adapter.output_choice = output
        adapter._open()  # fail now, with the file named, if onnxruntime cannot read it
        adapter.config = adapter._preprocessing(sidecar.get("config", {}), config_options)
        if device is not None:
            adapter.to(device)
        return adapter

    def _preprocessing(self, sidecar: dict, options: dict) -> PreprocessConfig:
        """The preprocessing from the model's metadata props, overridden by
        the sidecar JSON, overridden by the caller's options (the CLI's
        --mean/--std/--input-size/--interpolation); the input size falls back
        to the graph's static one. A file that says nothing about its mean and
        std gets a warning saying how to give them."""
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        try:
            metadata = config_from_metadata(props, self.path)
            settings = {**metadata, **sidecar, **options}
            settings.setdefault("input_size", self._static_input_size() or PreprocessConfig().input_size)
            config = PreprocessConfig.from_dict(settings)
        except (TypeError, ValueError) as error:
            raise InputError(f"bad preprocessing for {self.path}: {error}") from None
        if not ({"mean", "std"} & (set(metadata) | set(sidecar) | set(options))):
            warnings.warn(
                f"{self.path} carries no preprocessing (no sidecar {os.path.basename(sidecar_path(self.path))} with a "
                f"\"config\", no cnnviz.mean/std metadata props): assuming ImageNet mean and std, {config.interpolation} "
                f"resize to {config.input_size[0]}x{config.input_size[1]}; scores are wrong if the model was trained "
                "otherwise. Give it in the sidecar ({\"config\": {\"mean\": [R, G, B], \"std\": [R, G, B], "
                "\"input_size\": [H, W], \"interpolation\": \"bilinear\"}}), as metadata props (cnnviz.mean = \"[R, G, B]\", "
                "cnnviz.std, cnnviz.input_size, cnnviz.interpolation), or with --mean R G B --std R G B --input-size H W "
                "--interpolation NAME (load_model options mean=, std=, input_size=, interpolation=)", MethodWarning, stacklevel=4)
        return config

    def _new_session(self, model):
        """An InferenceSession on a path or serialized model bytes, on this
        adapter's device, with the adapter's options."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider warnings on CPU machines
        options.intra_op_num_threads = runtime_tuning.threads() or 0  # --threads / a worker's share; 0: onnxruntime's default
        providers = providers_for(self.device)
        try:
            session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as error:
            raise ModelLoadError(f"onnxruntime cannot load {self.path}: {str(error).splitlines()[0][:300]}") from None
        if self.device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
            # onnxruntime drops a CUDA provider that fails to load (missing CUDA libraries) without an error
            raise InputError(f"device {self.device} asked for, but onnxruntime could not start its CUDA provider "
                             "(check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use --device cpu)")
        return session

    def _open(self) -> None:
        self._session = self._new_session(self.path)
        self._exposed.clear()  # sessions with extra outputs are rebuilt on the new device
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path} has {len(inputs)} inputs; cnnviz needs one image input (B, 3, H, W)")
        self._input = inputs[0]
        self._output_name = input_layout.output_name(self._session.get_outputs(), getattr(self, "output_choice", None), self.path)
        self.channels_last = input_layout.channels_last(self._input.shape, self.path)
        self._input_dtype = input_layout.numpy_dtype(self._input.type, self.path)
        self._grey = input_layout.takes_grey(self._input.shape, self.channels_last, self.path)

    # -- description -------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        """The batch dimension when the graph fixes it (often 1), else None."""
        first = self._input.shape[0]
        return first if isinstance(first, int) else None

    def _static_input_size(self) -> tuple[int, int] | None:
        height, width = self._input.shape[1:3] if self.channels_last else self._input.shape[-2:]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def num_classes(self) -> int:
        last = next(o for o in self._session.get_outputs() if o.name == self._output_name).shape[-1]
        if isinstance(last, int):
            return last
        return int(self.logits(np.zeros((1, 3, *self.config.input_size), np.float32)).shape[1])

    def graph(self):
        if self._graph is None:
            import onnx

            self._graph = onnx.load(self.path, load_external_data=False).graph
        return self._graph

    def layers(self) -> list[str]:
        return [node.name or node.output[0] for node in self.graph().node]

    def default_layer(self) -> str:
        """The last node whose output is a 4-D map with more than one position
        (a transformer exported by cnnviz: its torch model's token layer)."""
        shapes = self._tensor_shapes()
        if self._tokens().default_layer is not None:
            return self._tokens().default_layer
        last = None
        for node in self.graph().node:
            dims = shapes.get(node.output[0]) if node.output else None
            if dims and len(dims) == 4 and (dims[2] or 0) * (dims[3] or 0) > 1:
                last = node.name or node.output[0]
        if last is None:
            raise LayerNotFoundError("<a spatial feature layer>", self.layers())
        return last

    def feature_layout(self, layer: str):
        return self._tokens().layouts.get(layer)

    def _tokens(self):
        from .onnx_model import tokens

        return self._remembered("token layers", lambda: tokens.token_layers(self, self._tensor_shapes()))

    def _tensor_shapes(self) -> dict[str, tuple]:
        return self._remembered("tensor shapes", lambda: shapes.tensor_shapes(self))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": os.path.abspath(self.path), "providers": self._session.get_providers()}

    # -- running -----------------------------------------------------------
    def to(self, device: str) -> "OnnxAdapter":
        if device != self.device:
            previous = self.device
            self.device = device
            try:
                self._open()
            except Exception:
                self.device = previous
                raise
        return self

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is not None and fixed != len(inputs):
            if fixed != 1:
                raise InputError(f"{self.path} has a fixed batch of {fixed}; export it with a dynamic batch")
            # a graph fixed at batch 1 is looped transparently
            return np.concatenate([self._run(inputs[i : i + 1]) for i in range(len(inputs))])
        return self._run(inputs)

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        (output,) = self._session.run([self._output_name], self._feed(inputs))
        return np.asarray(output, dtype=np.float32).reshape(len(inputs), -1)

    def _feed(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The session's input for a (B, 3, H, W) float32 batch: transposed to
        (B, H, W, 3) for a channels-last graph (TensorFlow exports), cast to
        the graph's input type (float16 models)."""
        if self._grey:  # a one-channel graph: the luminance, as the torch adapter feeds a one-channel model
            inputs = input_layout.grey(inputs, self.config.mean, self.config.std)
        return {self._input.name: input_layout.as_graph_input(inputs, self.channels_last, self._input_dtype)}

    # -- intermediate tensors and weights ------------------------------------
    def tensor_name(self, name: str) -> str:
        """A layer name (a node, meaning its first output) or a tensor name →
        the tensor's name; LayerNotFoundError for anything else."""
        graph = self.graph()
        for node in graph.node:
            if node.name and node.name == name and node.output:
                return node.output[0]
        tensors = {output for node in graph.node for output in node.output if output}
        if name in tensors or name in {o.name for o in graph.output}:
            return name
        raise LayerNotFoundError(name, self.layers())

    def logits_and_activations(self, inputs: np.ndarray, names) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits and the named tensors from one run of the graph, keyed by the
        names as given. A graph fixed at batch 1 is looped, as in :meth:`logits`."""
        tensors = {name: self.tensor_name(name) for name in names}
        wanted = sorted(set(tensors.values()) - {self._output_name})
        session = self._exposing(tuple(wanted))
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is not None and fixed != len(inputs):
            if fixed != 1:
                raise InputError(f"{self.path} has a fixed batch of {fixed}; export it with a dynamic batch")
            runs = [session.run([self._output_name, *wanted], self._feed(inputs[i : i + 1])) for i in range(len(inputs))]
            outputs = [np.concatenate(parts) for parts in zip(*runs)]
        else:
            outputs = session.run([self._output_name, *wanted], self._feed(inputs))
        logits = np.asarray(outputs[0], dtype=np.float32).reshape(len(inputs), -1)
        by_tensor = {self._output_name: np.asarray(outputs[0]), **dict(zip(wanted, outputs[1:]))}
        arrays = {name: input_layout.as_float32(by_tensor[tensor]) for name, tensor in tensors.items()}
        layouts = {name: self.feature_layout(name) for name in arrays}  # token layers as (B, C, h, w) maps
        return logits, {name: layouts[name].to_map(a) if layouts[name] else a for name, a in arrays.items()}

    def _exposing(self, tensors: tuple[str, ...], keep: bool = True):
        """A session on a copy of the model with ``tensors`` added as graph
        outputs; built once per set of tensors and kept (a few at most)
        unless ``keep`` is False."""
        if not tensors:
            return self._session
        if tensors not in self._exposed:
            import onnx

            model = self._model()
            present = {o.name for o in model.graph.output}
            model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in present)
            session = self._new_session(model.SerializeToString())
            if not keep:
                return session
            while len(self._exposed) >= self.max_cached_sessions:
                self._exposed.pop(next(iter(self._exposed)))
            self._exposed[tensors] = session
        return self._exposed[tensors]

    def exposed_once(self, inputs: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        """The named tensors for one batch from a session built for this call
        only (many tensors at once, once: not worth keeping)."""
        wanted = tuple(sorted(set(tensors) - {self._output_name}))
        session = self._exposing(wanted, keep=False)
        fixed = self.fixed_batch
        if fixed is not None and fixed != len(inputs):  # a graph fixed at batch 1, looped
            runs = [session.run([self._output_name, *wanted], self._feed(inputs[i : i + 1])) for i in range(len(inputs))]
            values = [np.concatenate(parts) for parts in zip(*runs)]
        else:
            values = session.run([self._output_name, *wanted], self._feed(inputs))
        by_name = {self._output_name: values[0], **dict(zip(wanted, values[1:]))}
        return {name: input_layout.as_float32(by_name[name]) for name in tensors}

    def weights(self) -> dict[str, np.ndarray]:
        """The graph's initializers by name, as numpy arrays."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(self.path)
        return {init.name: input_layout.as_float32(numpy_helper.to_array(init)) for init in model.graph.initializer}

    def weight_layers(self) -> list[WeightLayer]:
        return weight_layers.weight_layers(self.graph(), self.weights())

    def weight_table(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {alias: (row.weight_name, row.shape) for row in self._layer_rows() for alias in (row.name, *row.aliases)}

    def _layer_rows(self) -> list[weight_layers.LayerRow]:
        """The weight layers as the graph lists them, without reading values (kept: the graph does not change)."""
        if getattr(self, "_rows", None) is None:
            self._rows = weight_layers.layer_rows(self.graph())
        return self._rows

    @contextlib.contextmanager
    def with_weights(self, overrides: Mapping[str, np.ndarray]) -> Iterator["OnnxAdapter"]:
        """The graph run with the initializers of the named layers replaced:
        one session on an in-memory copy of the model, built for the block
        and dropped on exit (the file is only read)."""
        names = self.check_overrides(overrides)
        dtypes = {row.weight_name: row.dtype for row in self._layer_rows()}
        values = {names[name]: np.asarray(array, dtype=dtypes[names[name]]) for name, array in overrides.items()}
        saved = (self._session, self._exposed, self._overrides)
        self._exposed, self._overrides = {}, {**self._overrides, **values}
        try:
            self._session = self._new_session(self._model().SerializeToString())
            yield self
        finally:
            self._session, self._exposed, self._overrides = saved

    def _model(self):
        """The model read from its file (external data too), with the
        initializers ``with_weights`` replaces."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(self.path)  # external data, if any, read from beside the file
        for initializer in model.graph.initializer:
            if initializer.name in self._overrides:
                initializer.CopyFrom(numpy_helper.from_array(self._overrides[initializer.name], initializer.name))
        return model

    def forward_runners(self) -> dict[str, Callable[[], ForwardRunner]]:
        """Its own onnxruntime session (the one ``logits`` runs)."""
        def build() -> ForwardRunner:
            return ForwardRunner("onnx adapter", self.logits, facts={"providers": list(self._session.get_providers())})

        return {"onnxruntime": build}

    # -- model questions -----------------------------------------------------
    def layer_shapes(self, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
        known = self._tensor_shapes()
        found = {name: known.get(self.tensor_name(name)) for name in names}
        missing = [name for name, shape in found.items() if shape is None or None in shape[1:]]
        found.update(super().layer_shapes(missing) if missing else {})
        shapes = {name: (1, *shape[1:]) for name, shape in found.items()}
        return {name: self.feature_layout(name).map_shape(s) if self.feature_layout(name) else s for name, s in shapes.items()}

    def stage_outputs(self) -> list[str]:
        return self._remembered("stages", lambda: stages.stage_outputs(self, self._tensor_shapes()))

    def classifier_input_layer(self) -> str | None:
        return classifier_input.classifier_input_layer(self)

    def cam_head(self) -> CamHead:
        return cam_head.cam_head(self)

    def receptive_field(self, layer: str, verify: bool = True) -> ReceptiveField:
        if self.feature_layout(layer) is not None:  # token layers: attention mixes every patch, probed not traced
            return probed_receptive_field(self, layer)
        traced = receptive_field.layer_field(self, layer)
        return geometry.receptive_field(self, layer, traced, lambda: probed_receptive_field(self, layer), verify)

    def weights_digest(self) -> str:
        """SHA-256 of the model file's bytes and of any external-data files
        its initializers point to, read now (the file may be replaced)."""
        digest = hashlib.sha256()
        folder = os.path.dirname(os.path.abspath(self.path))
        external = sorted({entry.value for init in self.graph().initializer for entry in init.external_data
                           if entry.key == "location"})
        for path in [self.path, *(os.path.join(folder, name) for name in external)]:
            digest.update(os.path.basename(path).encode() + b"|")
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def _read_sidecar(path: str) -> dict:
    sidecar = sidecar_path(path)
    if not os.path.exists(sidecar):
        return {}
    try:
        with open(sidecar, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read the sidecar {sidecar}: {error}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"the sidecar {sidecar} must hold a JSON object")
    return data
