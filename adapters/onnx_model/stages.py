"""The stage outputs of an ONNX graph, shallow to deep.

A graph exported by cnnviz carries its torch model's stages in the sidecar
(``"stages"``: module names); each is the output of the last node in that
module's scope (the exporter names nodes ``/blocks/blocks.0/…/Conv``), so the
ONNX copy answers as its torch model does. Other graphs: each resolution a
Conv works at is a stage, and its output is the last node at that resolution."""

from __future__ import annotations

from cnnviz_core.model_probes import stages_by_resolution

from .weight_layers import module_path


def stage_outputs(adapter, shapes: dict[str, tuple]) -> list[str]:
    """``shapes``: node output shapes (see :mod:`.shapes`)."""
    named = adapter.sidecar.get("stages")
    if isinstance(named, list) and named:
        found = [_scope_output(adapter.graph(), str(module)) for module in named]
        if all(found):
            return found
    nodes = [node for node in adapter.graph().node if node.output]
    layer_shapes = {node.name or node.output[0]: shapes.get(node.output[0]) for node in nodes}
    convolutions = [node.name or node.output[0] for node in nodes if node.op_type == "Conv"]
    return stages_by_resolution([node.name or node.output[0] for node in nodes], layer_shapes, counted=convolutions)


def _scope_output(graph, module: str) -> str | None:
    """The last node inside the torch module ``module``'s scope, by layer name."""
    last = None
    for node in graph.node:
        path = module_path(node.name) if node.name else None
        if path is not None and (path == module or path.startswith(module + ".")):
            last = node.name
    return last
