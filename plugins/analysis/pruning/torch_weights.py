"""Pruned weights swapped into a torch module for the length of a ``with``
block, and the originals copied back on exit — on success and on error — so
the module afterwards equals the module before, bit for bit."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from cnnviz_plugins.analysis.pruning.magnitude import Cut


class PrunableWeights:
    """The module's pruned parameters and untouched copies of them (on the
    parameters' device, so a swap never leaves it)."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter]):
        self.parameters = list(parameters)
        self.originals = [p.detach().clone() for p in self.parameters]

    @contextlib.contextmanager
    def pruned(self, cut: Cut) -> Iterator[None]:
        """The weights ``cut`` removes are zero inside the block."""
        try:
            with torch.no_grad():
                for layer, (parameter, original) in enumerate(zip(self.parameters, self.originals)):
                    parameter.copy_(original.masked_fill(pruning_mask(original, cut, layer), 0))
            yield
        finally:
            self.restore()

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, original in zip(self.parameters, self.originals):
                parameter.copy_(original)


def pruning_mask(weight: torch.Tensor, cut: Cut, layer: int) -> torch.Tensor:
    """torch twin of :meth:`Cut.mask` (same rule, on the weight's device)."""
    magnitudes = weight.abs().float().contiguous()  # flat order = logical order, as numpy's
    if cut.count == 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    pruned = magnitudes < cut.threshold
    if cut.ties[layer]:
        tied = torch.nonzero((magnitudes == cut.threshold).reshape(-1)).reshape(-1)[: cut.ties[layer]]
        pruned.reshape(-1)[tied] = True
    return pruned
