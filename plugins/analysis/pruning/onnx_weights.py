"""Pruned copies of an ONNX model: the pruned weight initializers written into
an in-memory copy of the graph, one onnxruntime session per sparsity. The
user's file is only read."""

from __future__ import annotations

import numpy as np

from cnnviz_adapters.onnx_adapter import providers_for
from cnnviz_core.errors import InputError

from cnnviz_plugins.analysis.pruning.magnitude import Cut, prune
from cnnviz_adapters.inspect.weight_layers import WeightLayer


def load_model(adapter):
    import onnx

    return onnx.load(adapter.path)  # external data, if any, read from beside the file


def initializer_arrays(model, layers: list[WeightLayer]) -> list[np.ndarray]:
    from onnx import numpy_helper

    by_name = {init.name: init for init in model.graph.initializer}
    return [numpy_helper.to_array(by_name[layer.weight_name]) for layer in layers]


def pruned_sessions(adapter, model, layers: list[WeightLayer], weights: list[np.ndarray], cuts: list[Cut]) -> dict[int, object]:
    """A session per cut that prunes something, by its count, on the adapter's
    device. ``model`` is edited in place (it is the caller's own copy); its
    initializers hold the originals again on return."""
    from onnx import numpy_helper

    by_name = {init.name: init for init in model.graph.initializer}
    sessions = {}
    try:
        for cut in cuts:
            if cut.count == 0 or cut.count in sessions:
                continue
            for index, (layer, weight) in enumerate(zip(layers, weights)):
                by_name[layer.weight_name].CopyFrom(numpy_helper.from_array(prune(weight, cut, index), layer.weight_name))
            sessions[cut.count] = new_session(adapter, model.SerializeToString())
    finally:
        for layer, weight in zip(layers, weights):
            by_name[layer.weight_name].CopyFrom(numpy_helper.from_array(weight, layer.weight_name))
    return sessions


def new_session(adapter, serialized: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(serialized, sess_options=options, providers=providers_for(adapter.device))


def session_logits(session, inputs: np.ndarray) -> np.ndarray:
    """(B, classes) logits; a graph fixed at batch 1 is looped."""
    first = session.get_inputs()[0]
    output = session.get_outputs()[0].name
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    fixed = first.shape[0] if isinstance(first.shape[0], int) else None
    if fixed is not None and fixed != len(inputs):
        if fixed != 1:
            raise InputError(f"the ONNX model has a fixed batch of {fixed}; export it with a dynamic batch")
        parts = [session.run([output], {first.name: inputs[i : i + 1]})[0] for i in range(len(inputs))]
        return np.concatenate(parts).reshape(len(inputs), -1).astype(np.float32)
    return np.asarray(session.run([output], {first.name: inputs})[0], dtype=np.float32).reshape(len(inputs), -1)
