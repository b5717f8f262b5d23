"""The node whose output an ONNX model's classifier reads (the pooled
features), found by walking back from the logits."""

from __future__ import annotations

PASS_THROUGH = ("Identity", "Dropout", "Cast")  # ops between the classifier and the logits output
SCALING = ("Div", "Mul")  # a head averaged over branches: (head(x) + head_dist(x)) / 2 (DeiT, LeViT)
LINEAR = ("Gemm", "MatMul")


def classifier_input_layer(adapter) -> str | None:
    """Back from the logits: [Identity] → [scale] → [Add bias, or the sum of
    two linear heads] → Gemm or MatMul; the node producing its data input (the
    first head's where two are averaged), or None when the graph does not end so."""
    graph = adapter.graph()
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(getattr(adapter, "_output_name", None) or graph.output[0].name)
    while node is not None and node.op_type in PASS_THROUGH + SCALING:
        computed = [producers[i] for i in node.input if i in producers and producers[i].op_type != "Constant"]
        node = computed[0] if len(computed) == 1 or node.op_type in PASS_THROUGH else None
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type in LINEAR), None)
    if node is None or node.op_type not in LINEAR:
        return None
    feeder = producers.get(node.input[0])
    if feeder is None or feeder.output[0] != node.input[0]:
        return None
    return feeder.name or feeder.output[0]
