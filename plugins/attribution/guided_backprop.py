"""Guided backpropagation (Springenberg et al. 2015) as a cnnviz plugin."""

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import InputGradient


class GuidedBackprop(InputGradient):
    """Guided backprop: through every ReLU-like module pass only positive gradients where the input was positive."""

    name = "guided_backprop"
    rule = "guided"
    accepts = InputGradient.accepts | InputGradient.output_kinds  # multilabel, region, detection, callables too


@hookimpl
def cnnviz_methods():
    return [GuidedBackprop]
