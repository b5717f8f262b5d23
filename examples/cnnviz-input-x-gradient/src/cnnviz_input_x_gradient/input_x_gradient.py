"""Input x gradient (Shrikumar et al. 2016; Captum's InputXGradient) as a cnnviz
plugin: the input times the gradient of the explained score with respect to it.

One file, one method class, one hook implementation; the entry point in
``pyproject.toml`` names this module. It imports only the public API: names of
``cnnviz_core`` and of ``cnnviz_core.toolkit``, as the built-in methods do.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, Target, hookimpl, param, resolve_classes
from cnnviz_core.toolkit import class_scores


@dataclasses.dataclass
class InputXGradientParams(AttributionParams):
    # Inherited: score ("logit" or "prob") and batch_size.
    absolute: bool = param(False, "sum |x * grad| instead of x * grad over the colour channels (the per-channel image stays signed)")


class InputXGradient(AttributionMethod):
    """Input x gradient: x * d(score)/dx, summed over colour channels (Shrikumar et al. 2016)."""

    name = "input_x_gradient"
    requires = frozenset({Capability.GRADIENTS})
    Params = InputXGradientParams
    batch_hint = 16

    def attribute(self, inputs: np.ndarray, targets: list[Target]) -> Attribution:
        # The base class runs this inside adapter.session() (eval mode, undone
        # afterwards), so each input's score depends on that input alone and one
        # backward of the summed scores gives every input's own gradient.
        x = self.adapter.tensor(inputs).requires_grad_(True)
        with torch.enable_grad():
            logits = self.adapter.module(x)
            classes = resolve_classes(targets, logits.detach().float().cpu().numpy())
            scores = class_scores(logits, classes, self.params.score)  # the logit, or the probability
            # With respect to the input only: no parameter's .grad is touched.
            (gradient,) = torch.autograd.grad(scores.sum(), x)
        product = x.detach() * gradient  # (b, 3, H, W), raw
        maps = (product.abs() if self.params.absolute else product).sum(dim=1)
        return Attribution(
            maps=maps.float().cpu().numpy(),
            classes=classes,
            scores=scores.detach().float().cpu().numpy(),
            images=product.float().cpu().numpy(),
        )


@hookimpl
def cnnviz_methods():
    return [InputXGradient]
