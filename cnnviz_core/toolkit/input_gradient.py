"""Shared pipeline of the input-gradient methods (saliency, neuron gradient,
guided backprop, deconvnet): one forward, one backward to the image, batched.

The objective is the target's score (see :mod:`cnnviz_core.toolkit.scores`):
the logit or probability for class targets; for neuron targets the channel's
mean over positions (``layer:channel``) or one unit (``layer:channel@y,x``,
the deconv-approach experiment: that unit's gradient set to 1, every other
unit's to 0). Subclasses set ``rule`` (a modified backward) and ``accepts``
(the target kinds taken), or override :meth:`maps_from` (how the image
gradient becomes a map)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, Target, validate_targets

from .hooks import capture_outputs, frozen_parameters
from .scores import explained_scores


@dataclasses.dataclass
class GradientParams(AttributionParams):
    pass


class InputGradient(AttributionMethod):
    """∂score/∂input for a batch in one forward and one backward; ``images``
    keep the signed gradient, ``maps`` are :meth:`maps_from` of it."""

    requires = frozenset({Capability.GRADIENTS})
    Params = GradientParams
    batch_hint = 16
    accepts: frozenset[str] = frozenset({"class", "top1", "neuron"})  # target kinds, see cnnviz_core.targets
    # The targets scored from the model's whole output: a subclass whose every pass explains the target
    # itself (saliency, guided backprop, deconvnet) opts in with accepts | output_kinds; one that turns
    # targets into classes (integrated gradients' path, smoothgrad's copies) must not.
    output_kinds: frozenset[str] = frozenset({"callable", "multilabel", "region", "detection"})
    rule: str | None = None  # a backward rule of backward_rules.RULES ("guided", "deconvnet"), or the plain gradient

    def rule_context(self):
        """The backward pass's modification for the duration of one batch."""
        if self.rule is None:
            return contextlib.nullcontext()
        from .backward_rules import backward_rule  # imports torch

        return backward_rule(self.adapter.module, self.rule, self.name)

    def maps_from(self, gradients: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """Simonyan et al.'s map: max over colour channels of |gradient|."""
        return np.abs(gradients).max(axis=1)

    def check_targets(self, targets: list[Target]) -> None:
        validate_targets(targets, self.accepts, self.name, self.adapter)

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        gradients, classes, scores = self.input_gradients(inputs, targets)
        return Attribution(maps=self.maps_from(gradients, inputs), classes=classes, scores=scores, images=gradients)

    def input_gradients(self, inputs: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """∂objective/∂input per image, the class explained (-1 for neurons) and
        the objective's value on the clean input."""
        import torch

        module = self.adapter.module
        layers = {t.layer for t in targets if t.kind == "neuron"}
        hooked = {name: self.adapter.get_layer(name) for name in layers}
        with frozen_parameters(module), torch.enable_grad(), self.rule_context(), capture_outputs(hooked, protect=True) as outputs:
            x = self.adapter.tensor(inputs).requires_grad_(True)
            logits = module(x)
            objective, classes = explained_scores(logits, targets, self.params.score, outputs, inputs.shape[-2:])
            (gradients,) = torch.autograd.grad(objective.sum(), x)
        return gradients.float().cpu().numpy(), classes, objective.detach().float().cpu().numpy()
