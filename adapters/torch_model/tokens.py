"""The token and channels-last layers of a torch model (read as (B, C, h, w)
maps through :class:`cnnviz_core.feature_layout.FeatureLayout`) and the
default CAM layer of a transformer.

The patch grid comes from the patch embedding (timm's ``patch_embed``,
torchvision's ``conv_proj``) measured in one probe forward at the model's
input size, so a dynamic-size model gets the grid of the size it runs at;
prefix tokens from timm's ``num_prefix_tokens`` or the token parameters.
A layer is a token layer when its output is (1, prefix + h·w, C) or, at a
grid halved k times (Swin's stages), (1, h·w, C) or channels-last
(1, h, w, C) in a model whose patch embedding emits channels-last maps.
Windowed attention's outputs (a batch of windows) do not qualify. Only a
model with a patch embedding is searched: a CNN costs no forward here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from cnnviz_core.feature_layout import FeatureLayout
from cnnviz_core.toolkit.attention import attention_modules
from cnnviz_core.toolkit.hooks import forward_hooks

PATCH_EMBEDDINGS = ("patch_embed", "conv_proj", "stem")  # timm, torchvision ViT, hybrids (LeViT's conv stem)
PREFIX_TOKENS = ("cls_token", "class_token", "dist_token", "reg_token")
PYRAMID_LEVELS = 6  # grids down to 1/64 of the patch grid (Swin halves it per stage)


@dataclasses.dataclass(frozen=True)
class TokenModel:
    """What one probe forward found: each token layer's layout in finishing
    order, and the default CAM layer."""

    layouts: dict[str, FeatureLayout]
    default_layer: str | None


def token_model(adapter) -> TokenModel:
    """The token layers of a torch adapter's model (none for a model without
    a patch embedding), remembered per input size."""
    return adapter._remembered("token_layers", lambda: _probe(adapter))


def _patch_embedding(module: nn.Module) -> tuple[str, nn.Module] | None:
    for name in PATCH_EMBEDDINGS:
        if isinstance(getattr(module, name, None), nn.Module):
            return name, getattr(module, name)
    for name, sub in module.named_modules():
        if name.rsplit(".", 1)[-1] in PATCH_EMBEDDINGS:
            return name, sub
    return None


def strict_input_size(module: nn.Module) -> bool:
    """Whether the patch embedding takes only the size it was built for
    (timm's ``strict_img_size`` without ``dynamic_img_size``)."""
    embedding = _patch_embedding(module)
    if embedding is None:
        return False
    patch_embed = embedding[1]
    return bool(getattr(patch_embed, "strict_img_size", False)) and not getattr(patch_embed, "dynamic_img_size", False)


def prefix_tokens(module: nn.Module) -> int:
    """Class, distillation and register tokens before the patch tokens:
    timm says so in ``num_prefix_tokens``; otherwise they are counted from
    the token parameters."""
    count = getattr(module, "num_prefix_tokens", None)
    if isinstance(count, int) and count >= 0:
        return count
    total = 0
    for name in PREFIX_TOKENS:
        token = getattr(module, name, None)
        if isinstance(token, torch.Tensor):
            total += token.shape[1] if token.dim() == 3 else 1
    return total


def _probe(adapter) -> TokenModel:
    module: nn.Module = adapter.module
    embedding = _patch_embedding(module)
    if embedding is None:
        return TokenModel({}, None)
    embed_name, embed_module = embedding
    prefix = prefix_tokens(module)
    attention = set(attention_modules(module)) | {  # torchvision's ViT attends through nn.MultiheadAttention
        name for name, sub in module.named_modules() if isinstance(sub, nn.MultiheadAttention)}
    events: list[tuple[str, str, tuple[int, ...]]] = []  # ("end" | "start", name, output shape), in order

    def make_hook(name):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                events.append(("end", name, tuple(output.shape)))

        return hook

    named = {name: layer for name, layer in module.named_modules() if name}
    starts = [layer.register_forward_pre_hook(lambda *_, name=name: events.append(("start", name, ())))
              for name, layer in named.items() if name in attention]
    blank = np.zeros((1, 3, *adapter.config.input_size), dtype=np.float32)
    try:
        with forward_hooks(named, make_hook), adapter.session(), torch.inference_mode():
            module(adapter.tensor(blank))
    finally:
        for handle in starts:
            handle.remove()
    shapes = {name: shape for kind, name, shape in events if kind == "end"}
    grid, channels_last = _patch_grid(shapes.get(embed_name), embed_module, adapter.config.input_size, prefix)
    if grid is None:
        return TokenModel({}, None)
    levels = {(math.ceil(grid[0] / 2**k), math.ceil(grid[1] / 2**k)) for k in range(PYRAMID_LEVELS)}
    levels |= {(grid[0] // 2**k, grid[1] // 2**k) for k in range(PYRAMID_LEVELS)}
    levels = {level for level in levels if level[0] * level[1] > 1}
    layouts = {}
    for name, shape in shapes.items():
        layout = _layout(shape, grid, levels, prefix, channels_last)
        if layout is not None:
            layouts[name] = layout
    return TokenModel(layouts, _default_layer(events, layouts, prefix))


def _patch_grid(shape, embedding: nn.Module, input_size, prefix: int) -> tuple[tuple[int, int] | None, bool]:
    """The patch grid and whether the model carries channels-last maps, from
    the patch embedding's output: (B, C, h, w), (B, h, w, C) or (B, h·w, C)."""
    if shape is None:
        return None, False
    declared = getattr(embedding, "grid_size", None)
    declared = tuple(int(v) for v in declared) if isinstance(declared, (tuple, list)) and len(declared) == 2 else None
    if len(shape) == 4:
        if declared is not None and tuple(shape[1:3]) == declared and shape[3] != shape[1]:
            return declared, True
        if declared is not None and tuple(shape[2:4]) == declared:
            return declared, False
        fmt = str(getattr(embedding, "output_fmt", "")).upper()
        return ((shape[1], shape[2]), True) if fmt.endswith("NHWC") else ((shape[2], shape[3]), False)
    if len(shape) == 3:
        if declared is not None and declared[0] * declared[1] == shape[1]:
            return declared, False
        patch = getattr(embedding, "patch_size", None)
        if isinstance(patch, (tuple, list)) and len(patch) == 2:
            grid = (input_size[0] // patch[0], input_size[1] // patch[1])
            if grid[0] * grid[1] == shape[1]:
                return grid, False
    return None, False


def _layout(shape, grid, levels, prefix: int, channels_last: bool) -> FeatureLayout | None:
    if len(shape) == 3 and shape[0] == 1:
        if prefix and shape[1] == prefix + grid[0] * grid[1]:
            return FeatureLayout("tokens", grid, prefix)
        for level in levels:
            if shape[1] == level[0] * level[1]:
                return FeatureLayout("tokens", level, 0)
    if len(shape) == 4 and shape[0] == 1 and channels_last and tuple(shape[1:3]) in levels and shape[3] != shape[1]:
        return FeatureLayout("channels_last", tuple(shape[1:3]), 0)
    return None


def _default_layer(events, layouts: dict[str, FeatureLayout], prefix: int) -> str | None:
    """In a model whose class token is read out, the last token layer before
    the last attention (the last block's norm1): after that attention only
    the class token reaches the classifier and the patch tokens' gradients
    are zero. Otherwise the output of the last stage: at the last grid, the
    shallowest module to finish last (Swin's final norm, LeViT's last
    multi-position stage, not a projection inside the next downsampling)."""
    finished = [name for kind, name, _ in events if kind == "end" and name in layouts]
    if not finished:
        return None
    if prefix:
        last_start = max((i for i, (kind, _, _) in enumerate(events) if kind == "start"), default=None)
        if last_start is not None:
            before = [name for kind, name, _ in events[:last_start]
                      if kind == "end" and name in layouts and layouts[name].prefix == prefix]
            if before:
                return before[-1]
    last_grid = layouts[finished[-1]].grid
    at_grid = [name for name in finished if layouts[name].grid == last_grid]
    depth = min(name.count(".") for name in at_grid)
    return [name for name in at_grid if name.count(".") == depth][-1]


def tokens_for_export(adapter) -> dict | None:
    """The token layers an ONNX export records in its sidecar (module names,
    their layouts and the default CAM layer), so that the ONNX copy reads
    them as maps too; None for a model without token layers."""
    found = token_model(adapter)
    if not found.layouts:
        return None
    return {
        "default_layer": found.default_layer,
        "layouts": {name: {"kind": layout.kind, "grid": list(layout.grid), "prefix": layout.prefix}
                    for name, layout in found.layouts.items()},
    }
