"""The convolution and linear layers of an ONNX graph with their weights.

A layer exported from torch is named as the torch module: the exporter's node
name ``/blocks/blocks.0/blocks.0.0/conv_dw/Conv`` is turned back into the
module path ``blocks.0.0.conv_dw``; the node's name and the weight
initializer's name (``onnx::Conv_986``) find the layer too."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core.model_facts import WeightLayer
from cnnviz_core.model_probes import read_only


def module_path(node_name: str) -> str | None:
    """``/features/features.0/Conv`` → ``features.0``; ``/blocks/blocks.0/
    blocks.0.0/conv_dw/Conv`` → ``blocks.0.0.conv_dw``. The torch exporter
    writes each scope either as the full dotted path or as the attribute name
    under its parent; None for names that are not of that form."""
    if not node_name.startswith("/"):
        return None
    scopes = [s for s in node_name.strip("/").split("/")[:-1] if s]  # the last part is the op
    path = ""
    for scope in scopes:
        path = scope if not path or scope.startswith(path + ".") else f"{path}.{scope}"
    return path or None


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """A weight layer as the graph describes it (no values read)."""

    name: str
    kind: str
    weight_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    groups: int
    aliases: tuple[str, ...]


def layer_rows(graph) -> list[LayerRow]:
    """Conv nodes whose weight (input 1) is an initializer; Gemm and MatMul
    nodes whose second input is a 2-D initializer. An initializer used by
    several nodes is listed once."""
    from onnx import helper

    initializers = {init.name: init for init in graph.initializer}
    rows, seen, taken = [], set(), set()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.name in seen:
            continue
        shape = tuple(int(d) for d in weight.dims)
        if node.op_type == "Conv":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            kind, groups = "conv", int(attributes.get("group", 1))
        elif len(shape) == 2:
            kind, groups = "linear", 1
        else:
            continue
        node_name = node.name or node.output[0]
        name = module_path(node_name) or node_name
        if name in taken:  # two nodes from one torch module (rare): keep them apart
            name = node_name
        taken.add(name)
        seen.add(weight.name)
        aliases = tuple(a for a in dict.fromkeys((node_name, weight.name)) if a != name)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type))
        rows.append(LayerRow(name, kind, weight.name, shape, dtype, groups, aliases))
    return rows


def weight_layers(graph, arrays: dict[str, np.ndarray]) -> list[WeightLayer]:
    """The layers of :func:`layer_rows` with their values (``arrays``: the initializers')."""
    return [WeightLayer(row.name, row.kind, row.weight_name, row.shape, read_only(arrays[row.weight_name]), row.groups,
                        row.aliases) for row in layer_rows(graph)]
