"""The convolution and linear weights of a model, under names a user can type,
on torch modules and ONNX graphs alike (used by ``filters`` and ``pruning``).

A torch layer is named as in ``named_modules`` (``features.0``). An ONNX layer
exported from torch is named the same way: the exporter's node name
``/blocks/blocks.0/blocks.0.0/conv_dw/Conv`` is turned back into the module
path ``blocks.0.0.conv_dw``; the node name and the weight initializer's name
(``onnx::Conv_986``) find the layer too."""

from __future__ import annotations

import dataclasses

from cnnviz_core.errors import InputError, LayerNotFoundError

SHOWN_IN_ERRORS = 20  # layer names listed in a "no such layer" message
KIND_WORDS = {"conv": "convolution", "linear": "linear"}


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    name: str  # what the user types
    kind: str  # "conv" or "linear"
    weight_name: str  # torch: the parameter's name; ONNX: the initializer's name
    shape: tuple[int, ...]
    groups: int = 1
    aliases: tuple[str, ...] = ()  # other names that find it (ONNX node and initializer names)

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases


class WeightLayerNotFoundError(LayerNotFoundError):
    """A layer name that names no layer of the asked kind; lists those that do."""

    def __init__(self, layer: str, kind: str, names: list[str]):
        self.layer = layer
        kind = KIND_WORDS.get(kind, kind)
        close = [n for n in names if layer.lower() in n.lower()][:5]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        Exception.__init__(self, f"model has no {kind} layer {layer!r}.{hint} Its {kind} layers: {listing(names)}")


def listing(names: list[str]) -> str:
    """The first names, and how many there are in all."""
    shown = ", ".join(names[:SHOWN_IN_ERRORS]) or "none"
    return shown + (f" … ({len(names)} in all)" if len(names) > SHOWN_IN_ERRORS else "")


def weight_layers(adapter) -> list[WeightLayer]:
    """Convolution and linear layers with their weights, in model order."""
    if adapter.kind == "torch":
        return torch_weight_layers(adapter.module)
    if adapter.kind == "onnx":
        return onnx_weight_layers(adapter.graph())
    raise InputError(f"cannot read the layers of a {adapter.kind!r} model")


def find_layer(layers: list[WeightLayer], name: str, kind: str, all_layers: list[str]) -> WeightLayer:
    """The layer of ``kind`` that answers to ``name``. A real layer of another
    kind gets an InputError; an unknown name a WeightLayerNotFoundError; both
    list the layers that would do."""
    chosen = [layer for layer in layers if layer.kind == kind]
    for layer in chosen:
        if layer.answers_to(name):
            return layer
    names = [layer.name for layer in chosen]
    other = next((layer for layer in layers if layer.answers_to(name)), None)
    if other is not None or name in all_layers:
        word = KIND_WORDS.get(kind, kind)
        what = f"a {KIND_WORDS.get(other.kind, other.kind)} layer" if other is not None else f"not a {word} layer"
        raise InputError(f"layer {name!r} is {what}; give one of the {word} layers: {listing(names)}")
    raise WeightLayerNotFoundError(name, kind, names)


# -- torch -------------------------------------------------------------------
def torch_weight_layers(module) -> list[WeightLayer]:
    """Forward (not transposed) convolutions and nn.Linear layers; a weight
    shared by several modules is listed once, under its first module."""
    from torch import nn
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.parameter import UninitializedParameter

    layers, seen = [], set()
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        # a computed weight (weight norm, other parametrizations) is no parameter to read or prune in place
        if not name or not isinstance(weight, nn.Parameter) or isinstance(weight, UninitializedParameter) or id(weight) in seen:
            continue
        if isinstance(sub, _ConvNd) and not sub.transposed:
            layers.append(WeightLayer(name, "conv", f"{name}.weight", tuple(weight.shape), int(sub.groups)))
        elif isinstance(sub, nn.Linear):
            layers.append(WeightLayer(name, "linear", f"{name}.weight", tuple(weight.shape)))
        else:
            continue
        seen.add(id(weight))
    return layers


# -- ONNX --------------------------------------------------------------------
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


def onnx_weight_layers(graph) -> list[WeightLayer]:
    """Conv nodes whose weight (input 1) is an initializer; Gemm and MatMul
    nodes whose second input is a 2-D initializer. An initializer used by
    several nodes is listed once."""
    from onnx import helper

    initializers = {init.name: init for init in graph.initializer}
    layers, seen, taken = [], set(), set()
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
        layers.append(WeightLayer(name, kind, weight.name, shape, groups, aliases))
    return layers
