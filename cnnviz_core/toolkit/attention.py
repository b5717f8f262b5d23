"""Attention blocks of a torch model and their attention probabilities.

The probabilities softmax(q·kᵀ/√d) are read with a forward hook on each
block's ``attn_drop`` (timm's ``Attention``, ``WindowAttention`` and their
kin): its input is exactly the probability tensor (B, heads, N, N), and in
eval mode the dropout returns it unchanged. Recomputing q·k in a hook would
duplicate each architecture's own details (q/k norms, relative position
bias, masks); reading attn_drop does not. timm's fused attention
(``fused_attn``, scaled_dot_product_attention) never builds that tensor, so
:func:`unfused_attention` switches it off for the run and restores each
block's own flag on exit, on success and on error."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from .hooks import forward_hooks

if TYPE_CHECKING:
    import torch
    from torch import nn


def attention_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The attention blocks whose probabilities can be read, by name, in
    model order: modules with a ``num_heads`` and an ``attn_drop`` submodule."""
    from torch import nn

    return {
        name: sub for name, sub in module.named_modules()
        if name and isinstance(getattr(sub, "num_heads", None), int) and isinstance(getattr(sub, "attn_drop", None), nn.Module)
    }


@contextlib.contextmanager
def unfused_attention(blocks: dict[str, nn.Module]) -> Iterator[None]:
    """Set ``fused_attn = False`` on every block that has the flag; restore
    each block's own value on exit."""
    saved = [(block, block.fused_attn) for block in blocks.values() if hasattr(block, "fused_attn")]
    try:
        for block, _ in saved:
            block.fused_attn = False
        yield
    finally:
        for block, flag in saved:
            block.fused_attn = flag


@contextlib.contextmanager
def attention_probabilities(blocks: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record each block's attention probabilities (B, heads, N, N), detached,
    by block name, for the forwards run inside the block (fused attention off)."""
    import torch

    captured: dict[str, torch.Tensor] = {}
    drops = {name: block.attn_drop for name, block in blocks.items()}

    def make_hook(name):
        def hook(_module, inputs, _output):
            if inputs and isinstance(inputs[0], torch.Tensor):
                captured[name] = inputs[0].detach()

        return hook

    with unfused_attention(blocks), forward_hooks(drops, make_hook):
        yield captured
