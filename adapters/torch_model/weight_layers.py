"""The convolution and linear layers of a torch module with their weights,
named as in ``named_modules`` (``features.0``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.parameter import UninitializedParameter

from cnnviz_core.model_facts import WeightLayer
from cnnviz_core.model_probes import read_only


def weight_layers(module: nn.Module) -> list[WeightLayer]:
    """Forward (not transposed) convolutions and nn.Linear layers; a weight
    shared by several modules is listed once, under its first module. The
    arrays are read-only views of the parameters on the CPU (copies from
    another device)."""
    layers, seen = [], set()
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        # a computed weight (weight norm, other parametrizations) is no parameter to read or prune in place
        if not name or not isinstance(weight, nn.Parameter) or isinstance(weight, UninitializedParameter) or id(weight) in seen:
            continue
        if isinstance(sub, _ConvNd) and not sub.transposed:
            layers.append(WeightLayer(name, "conv", f"{name}.weight", tuple(weight.shape), _array(weight), int(sub.groups)))
        elif isinstance(sub, nn.Linear):
            layers.append(WeightLayer(name, "linear", f"{name}.weight", tuple(weight.shape), _array(weight)))
        else:
            continue
        seen.add(id(weight))
    return layers


def _array(parameter: nn.Parameter):
    tensor = parameter.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return read_only(tensor.cpu().numpy())
