"""Finding a CAM head — global average pooling followed by one linear layer —
in a torch module or an ONNX graph. Each finder returns a :class:`CamHead` or
raises MethodError saying why the head does not qualify."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core.errors import MethodError

GAP_LINEAR = "CAM needs a head of global average pooling followed by one linear layer"
USE_GRADCAM = "use gradcam, which needs no particular head"
RELATIVE_TOLERANCE = 1e-5
PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")  # ONNX ops between pool and classifier


@dataclasses.dataclass(frozen=True)
class CamHead:
    feature_layer: str  # torch: module name; ONNX: tensor name (the pooling node's input)
    weight: np.ndarray  # (classes, K): logit_c = Σ_k weight[c, k] · mean(A_k) + bias[c]
    bias: np.ndarray | None
    classifier: str  # the linear layer's name, for messages


def refuse(model: str, why: str) -> MethodError:
    return MethodError("cam", f"{GAP_LINEAR}; in model {model!r} {why}. Instead, {USE_GRADCAM}.")


def find_head(adapter) -> CamHead:
    if adapter.kind == "torch":
        return torch_head(adapter)
    if adapter.kind == "onnx":
        return onnx_head(adapter)
    raise MethodError("cam", f"cannot find the classifier of a {adapter.kind!r} model; {USE_GRADCAM}")


# -- torch -------------------------------------------------------------------
def _close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-12)
    return a.shape == b.shape and float(np.abs(a - b).max(initial=0.0)) <= RELATIVE_TOLERANCE * scale


def torch_head(adapter) -> CamHead:
    """The classifier is the last nn.Linear run in forward; the feature layer
    the last module, before it, with a spatial 4-D output whose mean over H, W
    equals the Linear's input, on a seeded random input (so the check that
    nothing else lies between pool and classifier is numeric, not by name)."""
    import torch
    from torch import nn

    from cnnviz_core.toolkit.hooks import forward_hooks

    events: list[tuple[str, str, np.ndarray]] = []  # (module, "linear" | "map", array), in the order modules return

    modules = {n: m for n, m in adapter.module.named_modules() if n}
    # Only maps with as many channels as some Linear takes can feed a classifier:
    # averaging every module's output would cost several forward passes.
    widths = {m.in_features for m in modules.values() if isinstance(m, nn.Linear)}

    def make_hook(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                events.append((name, "linear", inputs[0].detach().double().reshape(len(inputs[0]), -1).cpu().numpy()))
            elif (
                isinstance(output, torch.Tensor) and output.dim() == 4
                and output.shape[1] in widths and output.shape[-1] * output.shape[-2] > 1
            ):
                events.append((name, "map", output.detach().double().mean(dim=(2, 3)).cpu().numpy()))

        return hook

    generator = torch.Generator().manual_seed(0)
    dummy = torch.randn((2, 3, *adapter.config.input_size), generator=generator)
    with forward_hooks(modules, make_hook), adapter.session(), torch.inference_mode():
        logits = adapter.module(dummy.to(adapter.device)).double().cpu().numpy()
    linears = [i for i, event in enumerate(events) if event[1] == "linear"]
    if not linears:
        raise refuse(adapter.name, "no nn.Linear layer runs in forward (is the classifier a convolution?)")
    last = linears[-1]
    name, _, pooled = events[last]
    layer = modules[name]
    out = pooled @ layer.weight.detach().double().cpu().numpy().T
    if layer.bias is not None:
        out = out + layer.bias.detach().double().cpu().numpy()
    if not _close(out, logits.reshape(len(out), -1)):
        raise refuse(adapter.name, f"the output of the last linear layer {name!r} is not the model's output")
    features = [n for n, kind, mean in events[:last] if kind == "map" and _close(mean, pooled)]
    if not features:
        raise refuse(
            adapter.name,
            f"the input of the last linear layer {name!r} is not the global average pool of a feature map "
            "with more than one position (a flattened map, a 1x1 map, or another layer or op between pool and classifier)",
        )
    bias = layer.bias.detach().float().cpu().numpy() if layer.bias is not None else None
    return CamHead(features[-1], layer.weight.detach().float().cpu().numpy(), bias, name)


# -- ONNX --------------------------------------------------------------------
def _attribute(node, name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _constant(tensor: str, weights: dict, producers: dict):
    """An initializer or a Constant node's value; None otherwise."""
    if tensor in weights:
        return weights[tensor]
    node = producers.get(tensor)
    if node is not None and node.op_type == "Constant":
        from onnx import numpy_helper

        value = _attribute(node, "value", None)
        return numpy_helper.to_array(value) if value is not None else None
    return None


def onnx_head(adapter) -> CamHead:
    """Walk back from the logits output: [Identity] → Gemm, or MatMul [+ Add],
    with an initializer weight → [Flatten/Reshape/Squeeze] → GlobalAveragePool
    or ReduceMean over axes 2, 3; the feature map is the pool's input tensor."""
    graph = adapter.graph()
    producers = {output: node for node in graph.node for output in node.output}
    weights = adapter.weights()
    model = adapter.name

    def producer(tensor):
        return producers.get(tensor)

    node = producer(graph.output[0].name)
    while node is not None and node.op_type == "Identity":
        node = producer(node.input[0])
    bias = None
    if node is not None and node.op_type == "Add":
        (left, right), found = node.input, None
        for data, other in ((left, right), (right, left)):
            if producer(data) is not None and producer(data).op_type == "MatMul":
                found, bias = producer(data), _constant(other, weights, producers)
        if found is None or bias is None:
            raise refuse(model, f"the output comes from {node.name or node.op_type!r}, an Add that is not a linear layer's bias")
        node = found
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        what = f"a {node.op_type} node ({node.name!r})" if node is not None else "no node"
        raise refuse(model, f"the output comes from {what}, not from a linear layer (Gemm or MatMul)")
    classifier = node.name or node.output[0]
    matrix = _constant(node.input[1], weights, producers)
    if matrix is None or matrix.ndim != 2:
        raise refuse(model, f"the weight of the linear layer {classifier!r} is not a constant matrix")
    if node.op_type == "Gemm":
        if _attribute(node, "transA", 0):
            raise refuse(model, f"the linear layer {classifier!r} transposes its input")
        weight = (matrix if _attribute(node, "transB", 0) else matrix.T) * float(_attribute(node, "alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            constant = _constant(node.input[2], weights, producers)
            if constant is not None:
                bias = np.broadcast_to(constant.reshape(-1) * float(_attribute(node, "beta", 1.0)), weight.shape[:1])
    else:
        weight = matrix.T
    if bias is not None:
        bias = np.broadcast_to(np.asarray(bias).reshape(-1), weight.shape[:1]).astype(np.float32)
    pool = producer(node.input[0])
    while pool is not None and pool.op_type in PASS_THROUGH:
        pool = producer(pool.input[0])
    if pool is None or not _is_global_average(pool, weights, producers):
        what = f"a {pool.op_type} node ({pool.name!r})" if pool is not None else "the graph input"
        raise refuse(model, f"the input of the linear layer {classifier!r} comes from {what}, not from global average pooling")
    feature = pool.input[0]
    probe = np.zeros((1, 3, *adapter.config.input_size), dtype=np.float32)
    shape = adapter.activations(probe, [feature])[feature].shape
    if len(shape) != 4 or shape[1] != weight.shape[1] or shape[2] * shape[3] < 2:
        raise refuse(
            model, f"the pooled tensor {feature!r} has shape {tuple(shape)}, not a (B, {weight.shape[1]}, H, W) "
            "feature map with more than one position",
        )
    return CamHead(feature, np.ascontiguousarray(weight, dtype=np.float32), bias, classifier)


def _is_global_average(node, weights: dict, producers: dict) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:  # opset 18: axes is an input
        axes = _constant(node.input[1], weights, producers)
    return axes is not None and sorted(int(a) % 4 for a in np.ravel(axes)) == [2, 3]
