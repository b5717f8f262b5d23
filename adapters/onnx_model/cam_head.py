"""An ONNX graph's CAM head — global average pooling followed by one linear
layer — found by walking back from the logits; a :class:`CamHead` or a
MethodError saying why the head does not qualify."""

from __future__ import annotations

import numpy as np

from cnnviz_core.model_facts import CamHead, not_a_cam_head

PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")  # ops between pool and classifier


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


def cam_head(adapter) -> CamHead:
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
            raise not_a_cam_head(model, f"the output comes from {node.name or node.op_type!r}, an Add that is not a linear layer's bias")
        node = found
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        what = f"a {node.op_type} node ({node.name!r})" if node is not None else "no node"
        raise not_a_cam_head(model, f"the output comes from {what}, not from a linear layer (Gemm or MatMul)")
    classifier = node.name or node.output[0]
    matrix = _constant(node.input[1], weights, producers)
    if matrix is None or matrix.ndim != 2:
        raise not_a_cam_head(model, f"the weight of the linear layer {classifier!r} is not a constant matrix")
    if node.op_type == "Gemm":
        if _attribute(node, "transA", 0):
            raise not_a_cam_head(model, f"the linear layer {classifier!r} transposes its input")
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
        raise not_a_cam_head(model, f"the input of the linear layer {classifier!r} comes from {what}, not from global average pooling")
    feature = pool.input[0]
    probe = np.zeros((1, 3, *adapter.config.input_size), dtype=np.float32)
    shape = adapter.activations(probe, [feature])[feature].shape
    if len(shape) != 4 or shape[1] != weight.shape[1] or shape[2] * shape[3] < 2:
        raise not_a_cam_head(
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
