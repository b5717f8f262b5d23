"""ONNX adapter: any .onnx file through onnxruntime. Gradient free: it offers
forward passes, intermediate tensors (exposed as extra graph outputs of a
modified copy of the model) and the initializers as weights."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from cnnviz_core.adapter import ModelAdapter
from cnnviz_core.capabilities import Capability
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import InputError, LayerNotFoundError, ModelLoadError

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
    if device.startswith("cuda"):
        if not cuda_available():
            raise InputError(f"device {device} asked for, but onnxruntime has no usable CUDA provider here")
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
        config_options = {k: options.pop(k) for k in ("input_size", "mean", "std", "interpolation") if k in options}
        if options:
            raise InputError(f"unknown model option(s) for an ONNX model: {', '.join(sorted(options))}")
        sidecar = _read_sidecar(path)
        base = sidecar.get("config", {})
        try:
            config = PreprocessConfig.from_dict({**base, **config_options})
        except (TypeError, ValueError) as error:
            raise InputError(f"bad preprocessing for {path}: {error}") from None
        adapter = cls(path, config, labels if labels is not None else sidecar.get("labels"), name or sidecar.get("name"))
        adapter._open()  # fail now, with the file named, if onnxruntime cannot read it
        if "input_size" not in config_options and "config" not in sidecar:
            adapter.config = PreprocessConfig(**{**config.to_dict(), "input_size": adapter._static_input_size() or config.input_size})
        if device is not None:
            adapter.to(device)
        return adapter

    def _new_session(self, model):
        """An InferenceSession on a path or serialized model bytes, on this
        adapter's device, with the adapter's options."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider warnings on CPU machines
        try:
            return onnxruntime.InferenceSession(model, sess_options=options, providers=providers_for(self.device))
        except InputError:
            raise
        except Exception as error:
            raise ModelLoadError(f"onnxruntime cannot load {self.path}: {str(error).splitlines()[0][:300]}") from None

    def _open(self) -> None:
        self._session = self._new_session(self.path)
        self._exposed.clear()  # sessions with extra outputs are rebuilt on the new device
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path} has {len(inputs)} inputs; cnnviz needs one image input (B, 3, H, W)")
        self._input = inputs[0]
        self._output_name = self._session.get_outputs()[0].name

    # -- description -------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        """The batch dimension when the graph fixes it (often 1), else None."""
        first = self._input.shape[0]
        return first if isinstance(first, int) else None

    def _static_input_size(self) -> tuple[int, int] | None:
        height, width = self._input.shape[-2:]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def num_classes(self) -> int:
        last = self._session.get_outputs()[0].shape[-1]
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
        """The last node whose output is a 4-D map with more than one position.
        Shapes come from ONNX shape inference; where it leaves sizes unknown
        (padding computed at run time, as in TF-"same" convolutions) they are
        measured with one dummy forward."""
        if getattr(self, "_default_layer", None) is None:
            self._default_layer = self._find_default_layer()
        return self._default_layer

    def _find_default_layer(self) -> str:
        import onnx

        model = onnx.shape_inference.infer_shapes(onnx.load(self.path, load_external_data=False))
        shapes = {}
        for info in model.graph.value_info:
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        nodes = [node for node in model.graph.node if node.output]
        unknown = [n.output[0] for n in nodes if n.output[0] not in shapes or
                   (len(shapes[n.output[0]]) == 4 and None in shapes[n.output[0]][2:])]
        if unknown:
            _, measured = self.logits_and_activations(np.zeros((1, 3, *self.config.input_size), np.float32), unknown)
            shapes.update({name: list(np.shape(value)) for name, value in measured.items()})
            self._exposed.pop(tuple(sorted(set(unknown) - {self._output_name})), None)  # a one-off session: do not keep it
        last = None
        for node in nodes:
            dims = shapes.get(node.output[0])
            if dims and len(dims) == 4 and (dims[2] or 0) * (dims[3] or 0) > 1:
                last = node.name or node.output[0]
        if last is None:
            raise LayerNotFoundError("<a spatial feature layer>", self.layers())
        return last

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
        (output,) = self._session.run([self._output_name], {self._input.name: inputs})
        return np.asarray(output, dtype=np.float32).reshape(len(inputs), -1)

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
            runs = [session.run([self._output_name, *wanted], {self._input.name: inputs[i : i + 1]}) for i in range(len(inputs))]
            outputs = [np.concatenate(parts) for parts in zip(*runs)]
        else:
            outputs = session.run([self._output_name, *wanted], {self._input.name: inputs})
        logits = np.asarray(outputs[0], dtype=np.float32).reshape(len(inputs), -1)
        by_tensor = {self._output_name: np.asarray(outputs[0]), **dict(zip(wanted, outputs[1:]))}
        return logits, {name: np.asarray(by_tensor[tensor]) for name, tensor in tensors.items()}

    def _exposing(self, tensors: tuple[str, ...]):
        """A session on a copy of the model with ``tensors`` added as graph
        outputs; built once per set of tensors and kept (a few at most)."""
        if not tensors:
            return self._session
        if tensors not in self._exposed:
            import onnx

            model = onnx.load(self.path)  # external data, if any, read from beside the file
            present = {o.name for o in model.graph.output}
            model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in present)
            session = self._new_session(model.SerializeToString())
            while len(self._exposed) >= self.max_cached_sessions:
                self._exposed.pop(next(iter(self._exposed)))
            self._exposed[tensors] = session
        return self._exposed[tensors]

    def weights(self) -> dict[str, np.ndarray]:
        """The graph's initializers by name, as numpy arrays."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(self.path)
        return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


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
