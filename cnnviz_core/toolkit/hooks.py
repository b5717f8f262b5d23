"""Torch hooks and temporary model changes that always undo themselves, on
success and on error."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # torch loads with the first hook that needs it
    import torch
    from torch import nn


@contextlib.contextmanager
def forward_hooks(modules: dict[str, nn.Module], make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """Attach ``make_hook(name)`` as a forward hook on each module; remove all on exit."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_outputs(modules: dict[str, nn.Module], protect: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's (last) output by name. With ``protect`` the rest of
    the forward gets a clone, so an in-place op after the layer (ReLU(inplace=True))
    cannot change the recorded value or the gradient taken through it."""
    import torch

    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(_module, _inputs, output):
            outputs[name] = output
            if protect and isinstance(output, torch.Tensor):
                return output.clone()
            return None

        return hook

    with forward_hooks(modules, make_hook):
        yield outputs


@contextlib.contextmanager
def gradient_root(module: nn.Module, name: str, layout=None) -> Iterator[dict[str, torch.Tensor]]:
    """Make ``module``'s output the root of the autograd graph: it becomes a leaf
    that requires grad, so a backward from the score stops there. Used with
    :func:`frozen_parameters`, nothing before the layer builds a graph.
    With a ``layout`` (the adapter's ``feature_layout(name)`` for token or
    channels-last layers) the leaf is the (B, C, h, w) map and the forward
    runs on, from the map put back in the layer's layout."""
    import torch

    captured: dict[str, torch.Tensor] = {}

    def make_hook(layer_name):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {layer_name!r} returns {type(output).__name__}, not a tensor")
            if layout is not None:  # the map is the leaf; prefix tokens go on as constants
                leaf = layout.to_map(output.detach()).contiguous().requires_grad_(True)
                captured[layer_name] = leaf
                return layout.from_map(leaf, output.detach())
            leaf = output.detach().requires_grad_(True)
            captured[layer_name] = leaf
            # A clone, so that an in-place op after the layer (ReLU(inplace=True))
            # does not touch the leaf the gradient is taken against.
            return leaf.clone()

        return hook

    with forward_hooks({name: module}, make_hook):
        yield captured


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Turn off requires_grad on every parameter; restore each flag on exit."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for parameter, _ in saved:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag on exit."""
    saved = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for submodule, training in saved:
            submodule.training = training


def hook_count(module: nn.Module) -> int:
    """Hooks attached anywhere in the module tree (for leak checks)."""
    total = 0
    for submodule in module.modules():
        for attribute in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_full_backward_hooks"):
            total += len(getattr(submodule, attribute, {}) or {})
    return total
