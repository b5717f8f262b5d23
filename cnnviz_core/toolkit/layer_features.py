"""Read named layers' outputs from a torch model, differentiably, with a forward
pass that stops as soon as the last of them has run: inverting a mid-level
layer or matching style statistics needs no classifier head, and the layers
after the deepest one cost nothing.

Stopping early is exact only when every named module runs once per forward
(a module called twice would be read at its first call instead of its last),
so the first, reference pass counts the calls and turns stopping on only then.
Every hook lives in a context manager and is gone when a call returns.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnviz_core.toolkit.hooks import capture_outputs, forward_hooks
from cnnviz_core.errors import MethodError


class _AllCaptured(Exception):
    """Raised from a forward hook to end the forward pass early."""


class LayerFeatures:
    def __init__(self, adapter, names: list[str], method: str):
        self.module: nn.Module = adapter.module
        self.names = list(dict.fromkeys(names))
        self.layers = {name: adapter.get_layer(name) for name in self.names}
        self.method = method
        self.stop_early = False

    def reference(self, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A full forward without gradients: the logits and each layer's
        output (detached). Decides whether later passes may stop early."""
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
        with capture_outputs(self.layers, protect=True) as outputs:
            if not self.stop_early:
                self.module(inputs)
                return self._checked(outputs)

            def make_stop(_name):
                def stop(_module, _inputs, _output):
                    if len(outputs) == len(self.layers):
                        raise _AllCaptured

                return stop

            # Registered after the capturing hooks, so each layer is recorded before the check.
            with forward_hooks(self.layers, make_stop):
                try:
                    self.module(inputs)
                except _AllCaptured:
                    pass
            return self._checked(outputs)

    def _checked(self, outputs: dict) -> dict[str, torch.Tensor]:
        for name in self.names:
            output = outputs.get(name)
            if not isinstance(output, torch.Tensor):
                what = "did not run in the forward pass" if name not in outputs else f"returns {type(output).__name__}, not a tensor"
                raise MethodError(self.method, f"layer {name!r} {what}; choose another layer")
        return {name: outputs[name] for name in self.names}
