"""``cnnviz models --layers MODEL``: every layer of a model with its output
shape, from one probe forward at the model's input size, and the methods that
can take it as their layer.

What a method needs of a layer:

- ``map``: a feature map (B, C, h, w) with more than one position — a 4-D
  output, or a token / channels-last layer the adapter reads as a map (the
  CAM family, Score-CAM, top patches, neuron targets ``layer:channel``);
- ``tensor``: any tensor output (t-SNE, DeepDream, inversion, style transfer
  flatten or match it whole);
- ``conv``: a convolution's weights (filters).

A method says which by a class attribute ``layer_needs``; built-ins that do
not are looked up in :data:`BUILTIN_NEEDS`; a subclass of the toolkit's
GradientCAM needs a map, any other method with a layer parameter a tensor.
Only methods whose capabilities the model's adapter offers are listed."""

from __future__ import annotations

from . import api
from .capabilities import Capability
from .method import param_fields
from .registry import get_registry

LAYER_PARAMS = ("layer", "content_layer", "style_layers")
BUILTIN_NEEDS = {
    "score_cam": "map", "top_patches": "map", "guided_gradcam": "map", "filters": "conv",
    "tsne": "tensor", "deepdream": "tensor", "inversion": "tensor", "style_transfer": "tensor",
}
NEURON_TARGETS = "targets layer:channel"  # a map's channels are the neurons a target names


def layer_methods(adapter) -> dict[str, list[str]]:
    """need ("map", "tensor", "conv") → the registered methods that take a
    layer with it and run on ``adapter``'s capabilities, by name."""
    from .toolkit.gradient_cam import GradientCAM

    needs: dict[str, list[str]] = {"map": [], "tensor": [], "conv": []}
    for name, cls in get_registry().methods.items():
        if not any(field.name in LAYER_PARAMS for field in param_fields(cls.Params)):
            continue
        if api.missing_capabilities(cls, adapter):
            continue
        need = getattr(cls, "layer_needs", None) or BUILTIN_NEEDS.get(name)
        need = need or ("map" if isinstance(cls, type) and issubclass(cls, GradientCAM) else "tensor")
        needs.setdefault(need, []).append(name)
    return needs


def layer_rows(adapter) -> list[tuple[str, str, list[str]]]:
    """(layer, its output described, the needs it meets) for every layer."""
    names = adapter.layers()
    shapes = adapter.layer_shapes(names) if Capability.ACTIVATIONS in adapter.capabilities else {}
    convs = set()
    if Capability.WEIGHTS in adapter.capabilities:
        convs = {alias for layer in adapter.weight_layers() if layer.kind == "conv" for alias in (layer.name, *layer.aliases)}
    rows = []
    for name in names:
        shape = shapes.get(name)
        layout = adapter.feature_layout(name)
        met = []
        if shape is None:
            described = "-" if shapes else "(no activations)"
        elif layout is not None:
            described = f"{_raw_shape(layout, shape)} {layout.describe()} → map {_text(shape)}"
        else:
            described = _text(shape)
        if shape is not None:
            if len(shape) == 4 and shape[2] * shape[3] > 1:
                met.append("map")
            met.append("tensor")
        if name in convs:
            met.append("conv")
        rows.append((name, described, met))
    return rows


def print_layers(adapter) -> int:
    """The ``models --layers`` listing; returns the exit code."""
    try:
        default = adapter.default_layer()
    except Exception:  # noqa: BLE001 - a model without a spatial layer still lists its layers
        default = None
    methods = layer_methods(adapter)
    rows = layer_rows(adapter)
    width = min(max((len(name) for name, _, _ in rows), default=8), 48)
    shape_width = min(max((len(shape) for _, shape, _ in rows), default=8), 60)
    print(f"{adapter.name}: {len(rows)} layers; shapes for one input of {adapter.config.input_size[0]} x "
          f"{adapter.config.input_size[1]}")
    print(f"{'layer':<{width}}  {'output':<{shape_width}}  usable as")
    for name, shape, met in rows:
        uses = ", ".join(need for need in met if methods.get(need) or need == "map") or "-"
        marker = "   (default target layer)" if name == default else ""
        print(f"{name:<{width}}  {shape:<{shape_width}}  {uses}{marker}")
    print("usable as (output '-': the layer did not run in the forward pass or returns no tensor):")
    print(f"  map     {', '.join([*methods['map'], NEURON_TARGETS])}  (a (B, C, h, w) feature map: 4-D or tokens)")
    if methods["tensor"]:
        print(f"  tensor  {', '.join(methods['tensor'])}  (any tensor output)")
    if methods["conv"]:
        print(f"  conv    {', '.join(methods['conv'])}  (a convolution's weights)")
    return 0


def _raw_shape(layout, map_shape: tuple[int, ...]) -> str:
    b, c, h, w = map_shape
    raw = (b, h, w, c) if layout.kind == "channels_last" else (b, layout.prefix + h * w, c)
    return _text(raw)


def _text(shape) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ")"
