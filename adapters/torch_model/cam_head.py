"""A torch module's CAM head — global average pooling followed by one linear
layer — found numerically; a :class:`CamHead` or a MethodError saying why the
head does not qualify."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnviz_core.model_facts import CamHead, not_a_cam_head
from cnnviz_core.toolkit.hooks import forward_hooks

RELATIVE_TOLERANCE = 1e-5


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-12)
    return a.shape == b.shape and float(np.abs(a - b).max(initial=0.0)) <= RELATIVE_TOLERANCE * scale


def cam_head(adapter) -> CamHead:
    """The classifier is the last nn.Linear run in forward; the feature layer
    the last module, before it, with a spatial 4-D output whose mean over H, W
    equals the Linear's input, on a seeded random input (so the check that
    nothing else lies between pool and classifier is numeric, not by name)."""
    events: list[tuple[str, str, np.ndarray]] = []  # (module, "linear" | "map", array), in the order modules return

    modules = {n: m for n, m in adapter.module.named_modules() if n}
    # Only maps with as many channels as some Linear takes can feed a classifier:
    # averaging every module's output would cost several forward passes.
    widths = {m.in_features for m in modules.values() if isinstance(m, nn.Linear)}
    layouts = {name: adapter.feature_layout(name) for name in modules}  # token layers (Swin's, a ViT's) as maps

    def make_hook(name):
        def hook(module, inputs, output):
            if layouts[name] is not None and isinstance(output, torch.Tensor):
                output = layouts[name].to_map(output)
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                events.append((name, "linear", inputs[0].detach().double().reshape(len(inputs[0]), -1).cpu().numpy()))
            elif (
                isinstance(output, torch.Tensor) and output.dim() == 4
                and output.shape[1] in widths and output.shape[-1] * output.shape[-2] > 1
            ):
                events.append((name, "map", output.detach().double().mean(dim=(2, 3)).cpu().numpy()))

        return hook

    generator = torch.Generator().manual_seed(0)
    dummy = torch.randn((2, 3, *adapter.config.input_size), generator=generator)
    with forward_hooks(modules, make_hook), adapter.session(), torch.inference_mode():
        logits = adapter.module(dummy.to(adapter.device)).double().cpu().numpy()
    linears = [i for i, event in enumerate(events) if event[1] == "linear"]
    if not linears:
        raise not_a_cam_head(adapter.name, "no nn.Linear layer runs in forward (is the classifier a convolution?)")
    last = linears[-1]
    name, _, pooled = events[last]
    layer = modules[name]
    out = pooled @ layer.weight.detach().double().cpu().numpy().T
    if layer.bias is not None:
        out = out + layer.bias.detach().double().cpu().numpy()
    if not _close(out, logits.reshape(len(out), -1)):
        raise not_a_cam_head(adapter.name, f"the output of the last linear layer {name!r} is not the model's output")
    features = [n for n, kind, mean in events[:last] if kind == "map" and _close(mean, pooled)]
    if not features:
        raise not_a_cam_head(
            adapter.name,
            f"the input of the last linear layer {name!r} is not the global average pool of a feature map "
            "with more than one position (a flattened map, a 1x1 map, or another layer or op between pool and classifier)",
        )
    bias = layer.bias.detach().float().cpu().numpy() if layer.bias is not None else None
    return CamHead(features[-1], layer.weight.detach().float().cpu().numpy(), bias, name)
