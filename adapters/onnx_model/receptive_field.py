"""Receptive fields of ONNX models: the geometry walked through the graph's
nodes (Conv, pooling and Pad attributes; tensor shapes from ONNX shape
inference). Where a node scrambles the layout or a shape stays unknown the
field is measured instead, by the contract's perturbation probe
(:func:`cnnviz_core.model_probes.probed_receptive_field`)."""

from __future__ import annotations

import numpy as np

from ..geometry import (
    Field,
    aligned_field,
    input_field,
    lost_field,
    pad_sources,
    resize_sources,
    same_padding,
    sources_field,
    window_field,
)

POOLS = {"MaxPool", "AveragePool", "LpPool"}
REDUCTIONS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
              "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}
SHAPE_ONLY = {"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike"}
MIXING = {"ConvTranspose", "DepthToSpace", "SpaceToDepth", "Einsum", "GridSample", "Col2Im", "Loop", "If", "Scan",
          "NonZero", "Unique", "ScatterND", "ScatterElements", "GatherND", "GatherElements", "TopK", "ReverseSequence",
          "Compress", "RoiAlign", "MaxRoiPool", "MaxUnpool", "DFT", "STFT", "CumSum", "Trilu"}
AXIS_OPS = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "Gather": 0}  # mixing when their axis is spatial


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every tensor from ONNX shape inference (None where a
    dimension stays unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        shapes[info.name] = tuple(dims) if all(d is not None for d in dims) else None
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


class _Constants:
    """Values of initializers and Constant nodes, converted on demand, and of
    tensors read from a run of the graph (pads computed from shapes)."""

    def __init__(self, graph):
        self.initializers = {init.name: init for init in graph.initializer}
        self.nodes = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
        self.computed: dict[str, np.ndarray] = {}

    def known(self, name: str) -> bool:
        return name in self.initializers or name in self.nodes or name in self.computed

    def get(self, name: str):
        from onnx import numpy_helper

        if name in self.computed:
            return self.computed[name]
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.nodes.get(name)
        if node is not None and "value" in _attributes(node):
            return numpy_helper.to_array(_attributes(node)["value"])
        return None


# Inputs that carry parameters (pads, slice bounds, sizes), by op: read their values.
PARAMETER_INPUTS = {"Pad": (1, 3), "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Upsample": (1,)}


def layer_field(adapter, layer: str) -> tuple[Field | None, tuple[int, ...] | None]:
    """The field of ``layer``'s tensor and its shape, walking the graph once
    in node order (ONNX graphs are topologically sorted); the field is None if
    the tensor does not depend on the input.

    Shapes come from ONNX shape inference; where it cannot fix them (an
    exporter that computes pads from shapes at run time, as timm's "same"
    padding does) they, and such computed parameters, are read from one run
    of the graph on a blank image."""
    import onnx

    model = onnx.load(adapter.path, load_external_data=False)
    height, width = adapter.config.input_size
    image = (height, width)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    source = next(i for i in graph.input if i.name not in initializers)
    for dim, value in zip(source.type.tensor_type.shape.dim, (1, 3, height, width)):
        dim.Clear()
        dim.dim_value = value
    shapes = _shapes(model)
    constants = _Constants(graph)
    _read_unknowns(adapter, graph, source.name, shapes, constants)
    fields: dict[str, Field] = {source.name: input_field(height, width)}
    for node in graph.node:
        traced = [(fields[name], shapes.get(name)) for name in node.input if name in fields]
        if not traced or node.op_type in SHAPE_ONLY:
            continue
        for output in node.output:
            if output:
                fields[output] = _rule(node, traced, fields.get(node.input[0]), shapes, constants, shapes.get(output), image)
    tensor = adapter.tensor_name(layer)
    return fields.get(tensor), shapes.get(tensor)


def _read_unknowns(adapter, graph, source: str, shapes: dict, constants: _Constants) -> None:
    """Run the graph once on a blank image for the shapes of tensors computed
    from the image that shape inference left open, and for parameter inputs
    that are computed rather than constant."""
    reached, unshaped, parameters = {source}, [], []
    for node in graph.node:
        if node.op_type in SHAPE_ONLY or not any(name in reached for name in node.input):
            continue
        for index in PARAMETER_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and not constants.known(node.input[index]):
                parameters.append(node.input[index])
        for output in node.output:
            if output:
                reached.add(output)
                if shapes.get(output) is None:
                    unshaped.append(output)
    wanted = list(dict.fromkeys(unshaped + parameters))
    if not wanted:
        return
    height, width = adapter.config.input_size
    values = adapter.activations(np.zeros((1, 3, height, width), np.float32), wanted)
    for name, value in values.items():
        shapes[name] = tuple(np.shape(value))
    for name in parameters:
        constants.computed[name] = np.asarray(values[name])


def _rule(node, traced, first_field, shapes, constants, out_shape, image) -> Field:
    """The output's field; ``traced``: (field, shape) of the inputs computed
    from the image; ``first_field``: the data input's (None if constant)."""
    op = node.op_type
    if out_shape is None or any(shape is None for _, shape in traced):
        return Field(None, None, True)  # a shape inference could not fix: measure instead
    attributes = _attributes(node)
    in_shape = shapes.get(node.input[0])
    spatial = len(out_shape) == 4 and in_shape is not None and len(in_shape) == 4
    data_traced = first_field is not None
    if (op == "Conv" or op in POOLS) and spatial and data_traced:
        if op == "Conv":
            weight_shape = shapes.get(node.input[1])
            kernel = tuple(attributes.get("kernel_shape", weight_shape[-2:] if weight_shape else (1, 1)))
        else:
            kernel = tuple(attributes["kernel_shape"])
        strides = tuple(attributes.get("strides", (1, 1)))
        dilations = tuple(attributes.get("dilations", (1, 1)))
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin = tuple(same_padding(in_shape[2 + i], kernel[i], strides[i], dilations[i], auto_pad == "SAME_LOWER") for i in range(2))
        elif auto_pad == "VALID":
            begin = (0, 0)
        else:
            pads = tuple(attributes.get("pads", (0, 0, 0, 0)))
            begin = (pads[0], pads[1])
        return window_field(first_field, in_shape, out_shape, image, kernel, strides, begin, dilations)
    if op == "Pad" and spatial and data_traced:
        widths = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attributes.get("pads")
        axes = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if widths is None or (len(node.input) > 3 and node.input[3] and axes is None):
            return lost_field(out_shape, image)
        widths = [int(v) for v in np.ravel(widths)]
        axes = [int(a) % 4 for a in np.ravel(axes)] if axes is not None else list(range(4))
        begins = dict(zip(axes, widths[: len(axes)]))
        mode = attributes.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        return sources_field(first_field, in_shape, out_shape, image, pad_sources(out_shape[2], in_shape[2], begins.get(2, 0), mode),
                             pad_sources(out_shape[3], in_shape[3], begins.get(3, 0), mode))
    if op in ("Resize", "Upsample") and spatial and data_traced:
        return sources_field(first_field, in_shape, out_shape, image, resize_sources(out_shape[2], in_shape[2]),
                             resize_sources(out_shape[3], in_shape[3]))
    if op in MIXING or (op in ("MatMul", "Gemm") and any(len(shape) >= 3 for _, shape in traced)):
        return lost_field(out_shape, image)
    if op == "Transpose":
        rank = len(in_shape)
        perm = [int(p) for p in attributes.get("perm", list(range(rank))[::-1])]
        if rank >= 3 and perm[-2:] != [rank - 2, rank - 1]:
            return lost_field(out_shape, image)
    if op in AXIS_OPS and in_shape is not None and len(in_shape) >= 3:
        axis = int(attributes.get("axis", AXIS_OPS[op])) % len(in_shape)
        if axis >= len(in_shape) - 2:
            return lost_field(out_shape, image)
    if op == "Slice" and in_shape is not None and len(in_shape) >= 3:
        axes = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        starts = constants.get(node.input[1]) if len(node.input) > 1 else None
        if axes is None:
            axes = range(len(np.ravel(starts))) if starts is not None else range(len(in_shape))
        if any(int(a) % len(in_shape) >= len(in_shape) - 2 for a in np.ravel(list(axes))):
            return lost_field(out_shape, image)  # a crop or a reversal of the spatial axes
    return aligned_field(traced, out_shape, image, reduction=op in REDUCTIONS)
