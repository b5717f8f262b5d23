"""The token layers of an ONNX graph exported by cnnviz: the sidecar's
``"token_layers"`` names torch modules with their layouts (see
:func:`cnnviz_adapters.torch_model.tokens.tokens_for_export`); each module's
output is the last node in its scope (the exporter names nodes
``/blocks/blocks.1/norm1/LayerNormalization``), kept only where that node's
shape is the layout's. So the ONNX copy of a ViT reads the same layers as
maps, and has the same default CAM layer, as its torch model."""

from __future__ import annotations

import dataclasses

from cnnviz_core.feature_layout import KINDS, FeatureLayout

from .weight_layers import module_path


@dataclasses.dataclass(frozen=True)
class OnnxTokens:
    layouts: dict[str, FeatureLayout]  # by node name (the ONNX adapter's layer names)
    default_layer: str | None


def token_layers(adapter, shapes: dict[str, tuple]) -> OnnxTokens:
    """``shapes``: node output shapes by tensor name."""
    recorded = adapter.sidecar.get("token_layers")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("layouts"), dict):
        return OnnxTokens({}, None)
    last_node: dict[str, object] = {}  # module path (and every enclosing one) → the last node in its scope
    for node in adapter.graph().node:
        path = module_path(node.name) if node.name else None
        while path:
            last_node[path] = node
            path = path.rsplit(".", 1)[0] if "." in path else None
    layouts, names = {}, {}
    for module, entry in recorded["layouts"].items():
        layout = _layout(entry)
        node = last_node.get(module)
        if layout is None or node is None or not node.output:
            continue
        if _fits(layout, shapes.get(node.output[0])):
            layouts[node.name] = layout
            names[module] = node.name
    return OnnxTokens(layouts, names.get(recorded.get("default_layer")))


def _layout(entry) -> FeatureLayout | None:
    try:
        kind, grid, prefix = entry["kind"], tuple(int(v) for v in entry["grid"]), int(entry.get("prefix", 0))
    except (KeyError, TypeError, ValueError):
        return None
    return FeatureLayout(kind, grid, prefix) if kind in KINDS and len(grid) == 2 else None


def _fits(layout: FeatureLayout, shape) -> bool:
    if not shape:
        return False
    if layout.kind == "channels_last":
        return len(shape) == 4 and tuple(shape[1:3]) == layout.grid
    return len(shape) == 3 and shape[1] == layout.prefix + layout.grid[0] * layout.grid[1]
