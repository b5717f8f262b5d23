"""The module whose output a torch model's classifier reads — the pooled
features (timm's ``global_pool``, torchvision's ``avgpool``, a head's
penultimate layer) — found numerically."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnviz_core.toolkit.hooks import forward_hooks


def classifier_input_layer(adapter) -> str | None:
    """The last module, before the model's last nn.Linear, whose output is
    that Linear's input (flattened, or averaged over positions if spatial), on
    a seeded random input; None when the model has no nn.Linear or nothing
    feeds it that way."""
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
