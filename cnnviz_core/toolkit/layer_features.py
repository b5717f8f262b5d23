"""Read named layers' outputs from a torch model, differentiably, with a forward
pass that stops as soon as the last of them has run: inverting a mid-level
layer, matching style statistics or amplifying a channel needs no classifier
head, and the layers after the deepest one cost nothing.

:func:`read_layers` is the one forward that stops early; :class:`LayerFeatures`
adds the check that makes stopping exact for a given model: stopping is exact
only when every named module runs once per forward (a module called twice
would be read at its first call instead of its last), so its first, reference
pass counts the calls and turns stopping on only then.
Every hook lives in a context manager and is gone when a call returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from cnnviz_core import MethodError

from .hooks import capture_outputs, forward_hooks

if TYPE_CHECKING:  # torch loads with the first read
    import torch
    from torch import nn


class _AllRead(Exception):
    """Raised from a forward hook to end the forward pass early (never leaves this module)."""


def read_layers(
    module: nn.Module, inputs: torch.Tensor, layers: Mapping[str, nn.Module], stop_early: bool = True
) -> tuple[torch.Tensor | None, dict[str, object]]:
    """One forward of ``inputs`` through ``module`` recording each of ``layers``'
    outputs by name, in the autograd graph; the rest of the forward gets a
    clone, so in-place ops after a layer cannot change what was read. With
    ``stop_early`` the forward ends once every layer has run and the model's
    output is None; otherwise it is returned. A layer that did not run is
    missing from the dict; check what you need."""
    with capture_outputs(dict(layers), protect=True) as outputs:
        if not stop_early or not layers:
            return module(inputs), dict(outputs)

        def make_stop(_name):
            def stop(_module, _inputs, _output):
                if len(outputs) == len(layers):
                    raise _AllRead

            return stop

        # Registered after the capturing hooks, so each layer is recorded before the check.
        with forward_hooks(dict(layers), make_stop):
            try:
                result = module(inputs)
            except _AllRead:
                result = None
        return result, dict(outputs)


class LayerFeatures:
    """The outputs of ``names`` (layers of ``adapter``'s model) for a method
    named ``method`` (its errors name it): call :meth:`reference` once, then
    call the object for each differentiable, early-stopped read. Token and
    channels-last layers (a transformer's) come as (B, C, h, w) maps, through
    the adapter's ``feature_layout``; the reshape is in the graph."""

    def __init__(self, adapter, names: list[str], method: str):
        self.module: nn.Module = adapter.module
        self.names = list(dict.fromkeys(names))
        self.layers = {name: adapter.get_layer(name) for name in self.names}
        self.layouts = {name: adapter.feature_layout(name) for name in self.names}
        self.method = method
        self.stop_early = False

    def reference(self, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A full forward without gradients: the logits and each layer's
        output (detached). Decides whether later passes may stop early."""
        import torch

        calls = dict.fromkeys(self.names, 0)

        def make_counter(name):
            def count(_module, _inputs, _output):
                calls[name] += 1

            return count

        with torch.no_grad(), capture_outputs(self.layers, protect=True) as outputs, forward_hooks(self.layers, make_counter):
            logits = self.module(inputs)
        self.stop_early = all(count == 1 for count in calls.values())
        return logits, self._checked(outputs)

    def __call__(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layers' outputs, with the graph back to ``inputs``. Outputs are
        protected from in-place ops later in the forward (their clone runs on)."""
        _, outputs = read_layers(self.module, inputs, self.layers, self.stop_early)
        return self._checked(outputs)

    def _checked(self, outputs: dict) -> dict[str, torch.Tensor]:
        import torch

        for name in self.names:
            output = outputs.get(name)
            if not isinstance(output, torch.Tensor):
                what = "did not run in the forward pass" if name not in outputs else f"returns {type(output).__name__}, not a tensor"
                raise MethodError(self.method, f"layer {name!r} {what}; choose another layer")
        return {name: self.layouts[name].to_map(outputs[name]) if self.layouts[name] else outputs[name] for name in self.names}
