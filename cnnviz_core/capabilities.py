"""What a model adapter can do, and so what a method may ask of it."""

from __future__ import annotations

import enum


class Capability(str, enum.Enum):
    FORWARD = "forward"          # batched scores (logits) for preprocessed inputs
    GRADIENTS = "gradients"      # autograd through the model (torch modules)
    ACTIVATIONS = "activations"  # intermediate layer outputs by name
    WEIGHTS = "weights"          # parameters / initializers by name

    def __str__(self) -> str:
        return self.value


def as_capabilities(values) -> frozenset[Capability]:
    return frozenset(Capability(v) for v in values)
