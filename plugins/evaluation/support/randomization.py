"""The model-parameter randomization test's plan (Adebayo et al. 2018,
"Sanity checks for saliency maps"): which weight layers are randomized at
each step, and the random weights they get.

- The layers are the model's convolution and linear layers in model order
  (the adapter contract's ``weight_layers``; their weights are what
  ``with_weights`` replaces — biases and normalization parameters keep
  their trained values).
- ``points`` randomization points spread evenly over those layers from the
  top (the output side) to the bottom, always the top and the bottom layer
  (0 or more points than layers: every layer, as Adebayo et al.).
- cascading: step j randomizes every layer from the top down to point j,
  the layers of the steps before staying randomized (each layer is swapped
  in once and restored once, at the end); independent: step j randomizes
  the layer at point j alone.
- a layer's random weights are drawn once (so a cascade adds layers to the
  ones already randomized, never redraws them) from a normal distribution
  with the trained weights' standard deviation (Adebayo et al. re-draw from
  the initializer's truncated normal; keeping the layer's own scale keeps
  the activations in range through unnormalized layers), seeded by ``seed``
  and the layer's position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("cascading", "independent")


@dataclasses.dataclass(frozen=True)
class Step:
    layer: str  # the layer at this randomization point
    depth: int  # its position counted from the top: 1 is the output layer
    randomized: tuple[str, ...]  # every layer randomized at this step
    added: tuple[str, ...]  # those not randomized at the step before (a cascade keeps the earlier ones)


def points(count: int, wanted: int) -> list[int]:
    """Indices (model order) of the randomization points, top first."""
    if count == 0:
        return []
    if wanted <= 0 or wanted >= count:
        return list(range(count - 1, -1, -1))
    chosen = np.round(np.linspace(count - 1, 0, wanted)).astype(int)
    return list(dict.fromkeys(int(i) for i in chosen))


def plan(layer_names: list[str], wanted: int, mode: str) -> list[Step]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    count = len(layer_names)
    steps: list[Step] = []
    for index in points(count, wanted):
        randomized = tuple(reversed(layer_names[index:] if mode == "cascading" else [layer_names[index]]))
        before = set(steps[-1].randomized) if steps and mode == "cascading" else set()
        added = tuple(name for name in randomized if name not in before)
        steps.append(Step(layer_names[index], count - index, randomized, added))
    return steps


def random_weight(weight: np.ndarray, seed: int, position: int) -> np.ndarray:
    """A weight array of the same shape, normal with the original's std."""
    weight = np.asarray(weight)
    scale = float(np.std(weight, dtype=np.float64))
    if not scale > 0:  # a constant layer: the default initializers' scale, 1/sqrt(fan-in)
        scale = 1.0 / np.sqrt(max(int(np.prod(weight.shape[1:])), 1))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, position])
    return (rng.standard_normal(weight.shape) * scale).astype(weight.dtype if weight.dtype.kind == "f" else np.float32)
