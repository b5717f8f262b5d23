"""The outputs of a torch model's stages, shallow to deep (the contract's
``stage_outputs``): the default layers of the methods that match
representations (inversion, style transfer) and, one before the last, of
DeepDream.

A stage is the run of layers working at one spatial resolution; its output is
the feature map handed to the next resolution, like the conv1 … conv5 blocks
of VGG that Gatys et al. take their style from.

- timm models list their stages in ``feature_info`` (efficientnet_lite0:
  blocks.0, blocks.1, blocks.2, blocks.4, blocks.6; resnet18: act1, layer1 …
  layer4; vgg16: features.3, .8, .15, .22, .29); a pooling layer listed there
  only subsamples the stage before it and is left out.
- other modules: one forward on a blank input records every module's output
  size; each resolution a convolution works at is a stage, and its output is
  the shallowest module (fewest dots in its name) at that resolution to
  finish last — the block container rather than its last conv.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnviz_core.errors import LayerNotFoundError
from cnnviz_core.toolkit.hooks import forward_hooks


def stage_outputs(adapter) -> list[str]:
    """Names of the stage outputs of a torch adapter's model, shallow to deep."""
    module: nn.Module = adapter.module
    modules = dict(module.named_modules())
    info = getattr(module, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(entry, dict) and entry.get("module") in modules for entry in info):
        stages = [entry["module"] for entry in info if entry["module"] and not _is_pooling(modules[entry["module"]])]
        if stages:
            return stages
    return _stages_by_resolution(adapter)


def _is_pooling(module: nn.Module) -> bool:
    return "pool" in type(module).__name__.lower()


def _stages_by_resolution(adapter) -> list[str]:
    module: nn.Module = adapter.module
    finished: list[tuple[str, tuple[int, int], bool]] = []  # (name, (H, W), is a convolution), in finishing order

    def make_hook(name):
        def hook(layer, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                finished.append((name, tuple(output.shape[-2:]), isinstance(layer, nn.modules.conv._ConvNd)))

        return hook

    named = {name: layer for name, layer in module.named_modules() if name}
    blank = np.zeros((1, 3, *adapter.config.input_size), dtype=np.float32)
    with forward_hooks(named, make_hook), adapter.session(), torch.inference_mode():
        module(adapter.tensor(blank))
    sizes = list(dict.fromkeys(size for _, size, _ in finished))
    stages = []
    for size in sizes:
        members = [(name, conv) for name, at, conv in finished if at == size]
        if not any(conv for _, conv in members):
            continue  # only pooling at this size: it subsamples the stage before
        depth = min(name.count(".") for name, _ in members)
        stages.append([name for name, _ in members if name.count(".") == depth][-1])
    if not stages:
        raise LayerNotFoundError("<a convolutional stage>", adapter.layers())
    return list(dict.fromkeys(stages))


def stages_for_export(adapter) -> list[str] | None:
    """The stage outputs an ONNX export records in its sidecar, so that the
    ONNX copy names the same stages (None for a model without spatial stages)."""
    try:
        return adapter.stage_outputs()
    except LayerNotFoundError:
        return None
