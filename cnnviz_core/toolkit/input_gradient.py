"""Shared pipeline of the input-gradient methods (saliency, neuron gradient,
guided backprop, deconvnet): one forward, one backward to the image, batched.

The objective is the target's score (logit or probability) for class targets,
or one unit of a layer for neuron targets (``layer:channel`` sums the
channel's map; ``layer:channel@y,x`` takes one position) — the deconv-approach
experiment: that unit's gradient set to 1, every other unit's to 0.
Subclasses override :meth:`rule_context` (a modified backward) or
:meth:`maps_from` (how the image gradient becomes a map)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability
from cnnviz_core.errors import TargetError
from cnnviz_core.targets import Target, resolve_classes
from cnnviz_core.toolkit.hooks import capture_outputs, frozen_parameters

from cnnviz_core.toolkit.backward_rules import backward_rule
from cnnviz_core.toolkit.gradient_cam import class_scores


@dataclasses.dataclass
class GradientParams(AttributionParams):
    pass


class InputGradient(AttributionMethod):
    requires = frozenset({Capability.GRADIENTS})
    Params = GradientParams
    batch_hint = 16
    accepts_neurons = True
    rule: str | None = None  # a backward rule of backward_rules.RULES ("guided", "deconvnet"), or the plain gradient

    def rule_context(self):
        """The backward pass's modification for the duration of one batch."""
        if self.rule is None:
            return contextlib.nullcontext()
        return backward_rule(self.adapter.module, self.rule, self.name)

    def maps_from(self, gradients: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """Simonyan et al.'s map: max over colour channels of |gradient|."""
        return np.abs(gradients).max(axis=1)

    def check_targets(self, targets: list[Target]) -> None:
        neurons = [t for t in targets if t.kind == "neuron"]
        if not neurons:
            return
        if not self.accepts_neurons:
            super().check_targets(targets)
        shapes = self.adapter.layer_shapes(sorted({t.layer for t in neurons}))
        for target in neurons:
            shape = shapes.get(target.layer)
            if shape is None or len(shape) < 2:
                raise TargetError(f"layer {target.layer!r} has no channel dimension (output {shape})")
            if target.channel >= shape[1]:
                raise TargetError(f"layer {target.layer!r} has {shape[1]} channels; channel {target.channel} is out of range")
            if target.position is not None:
                if len(shape) != 4:
                    raise TargetError(f"layer {target.layer!r} has no spatial map (output {shape}); drop @y,x")
                y, x = target.position
                if not (y < shape[2] and x < shape[3]):
                    raise TargetError(
                        f"position {y},{x} is outside layer {target.layer!r}'s {shape[2]}x{shape[3]} map"
                    )

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        gradients, classes, scores = self.input_gradients(inputs, targets)
        return Attribution(maps=self.maps_from(gradients, inputs), classes=classes, scores=scores, images=gradients)

    def input_gradients(self, inputs: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """∂objective/∂input per image, the class explained (-1 for neurons) and
        the objective's value on the clean input."""
        module = self.adapter.module
        layers = {t.layer for t in targets if t.kind == "neuron"}
        hooked = {name: self.adapter.get_layer(name) for name in layers}
        with frozen_parameters(module), torch.enable_grad(), self.rule_context(), capture_outputs(hooked, protect=True) as outputs:
            x = self.adapter.tensor(inputs).requires_grad_(True)
            logits = module(x)
            classes = np.array([-1 if t.kind == "neuron" else 0 for t in targets], dtype=np.int64)
            class_rows = [i for i, t in enumerate(targets) if t.kind != "neuron"]
            if class_rows:
                classes[class_rows] = resolve_classes([targets[i] for i in class_rows], logits.detach()[class_rows].float().cpu().numpy())
            objective = self._objective(logits, outputs, targets, classes)
            (gradients,) = torch.autograd.grad(objective.sum(), x)
        return gradients.float().cpu().numpy(), classes, objective.detach().float().cpu().numpy()

    def _objective(self, logits, outputs, targets, classes) -> torch.Tensor:
        values = []
        class_values = class_scores(logits, np.maximum(classes, 0), self.params.score)
        for i, target in enumerate(targets):
            if target.kind != "neuron":
                values.append(class_values[i])
                continue
            unit = outputs[target.layer][i, target.channel]
            values.append(unit[target.position] if target.position is not None else unit.sum())
        return torch.stack(values)
