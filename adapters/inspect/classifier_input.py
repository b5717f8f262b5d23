"""The layer whose output a model's classifier reads — the pooled features
(timm's ``global_pool``, torchvision's ``avgpool``, a head's penultimate
layer) — found in a torch module or an ONNX graph."""

from __future__ import annotations

import numpy as np

PASS_THROUGH = ("Identity", "Dropout", "Cast")  # ONNX ops between the classifier and the logits output


def classifier_input_layer(adapter) -> str | None:
    """The last layer, before the model's last linear layer, whose output is
    that layer's input (flattened, or averaged over positions if spatial);
    None when the model has no linear classifier or nothing feeds it that way."""
    if adapter.kind == "torch":
        return _torch(adapter)
    if adapter.kind == "onnx":
        return _onnx(adapter)
    return None


def _torch(adapter) -> str | None:
    import torch
    from torch import nn

    from cnnviz_core.toolkit.hooks import forward_hooks

    modules = {n: m for n, m in adapter.module.named_modules() if n}
    widths = {m.in_features for m in modules.values() if isinstance(m, nn.Linear)}
    if not widths:
        return None
    events: list[tuple[str, str, np.ndarray]] = []  # (module, "linear" | "output", features), as modules return

    def make_hook(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                events.append((name, "linear", inputs[0].detach().double().reshape(len(inputs[0]), -1).cpu().numpy()))
            elif isinstance(output, torch.Tensor) and output.dim() >= 2:
                # only outputs as wide as some Linear's input can feed one
                per_item = output.detach().double().reshape(len(output), -1)
                if per_item.shape[1] in widths:
                    events.append((name, "output", per_item.cpu().numpy()))
                elif output.dim() == 4 and output.shape[1] in widths:
                    events.append((name, "output", output.detach().double().mean(dim=(2, 3)).cpu().numpy()))

        return hook

    generator = torch.Generator().manual_seed(0)
    dummy = torch.randn((2, 3, *adapter.config.input_size), generator=generator)
    with forward_hooks(modules, make_hook), adapter.session(), torch.inference_mode():
        adapter.module(dummy.to(adapter.device))
    linears = [i for i, event in enumerate(events) if event[1] == "linear"]
    if not linears:
        return None
    features = events[linears[-1]][2]
    matches = [name for name, kind, values in events[: linears[-1]]
               if kind == "output" and values.shape == features.shape and np.allclose(values, features, rtol=1e-5, atol=1e-6)]
    return matches[-1] if matches else None


def _onnx(adapter) -> str | None:
    """Back from the logits: [Identity] → [Add bias] → Gemm or MatMul; the
    node producing its data input."""
    graph = adapter.graph()
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(graph.output[0].name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    feeder = producers.get(node.input[0])
    if feeder is None or feeder.output[0] != node.input[0]:
        return None
    return feeder.name or feeder.output[0]
