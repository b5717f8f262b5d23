"""Output shapes of an ONNX graph's tensors for one image: from ONNX shape
inference, and measured by one run of a blank image where inference leaves
them unknown (padding computed at run time, as in TF-"same" convolutions)."""

from __future__ import annotations

import numpy as np


def tensor_shapes(adapter) -> dict[str, tuple[int | None, ...]]:
    """Every node output's shape (batch dimension 1 where measured)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(adapter.path, load_external_data=False))
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in model.graph.value_info:
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)
    outputs = [output for node in model.graph.node for output in node.output if output]
    unknown = [name for name in outputs if name not in shapes or (len(shapes[name]) == 4 and None in shapes[name][2:])]
    if unknown:
        measured = adapter.exposed_once(np.zeros((1, 3, *adapter.config.input_size), np.float32), unknown)
        shapes.update({name: tuple(np.shape(value)) for name, value in measured.items()})
    return shapes
