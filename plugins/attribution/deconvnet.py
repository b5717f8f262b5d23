"""Deconvnet (Zeiler & Fergus 2014) as a cnnviz plugin."""

import numpy as np

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import InputGradient


class Deconvnet(InputGradient):
    """Deconvnet: through every ReLU-like module pass the ReLU of the gradient, whatever the forward input was."""

    name = "deconvnet"
    rule = "deconvnet"
    accepts = InputGradient.accepts | InputGradient.output_kinds  # multilabel, region, detection, callables too

    @classmethod
    def demo_target(cls, adapter, inputs):
        """As Zeiler & Fergus show it: one strong unit projected back, each
        image's strongest unit of the middle stage output (layer:channel@y,x)."""
        stages = adapter.stage_outputs()
        layer = stages[len(stages) // 2]
        targets = []
        for values in adapter.activations(inputs, [layer])[layer]:
            channel, y, x = np.unravel_index(int(np.argmax(values)), values.shape)
            targets.append(f"{layer}:{channel}@{y},{x}")
        return targets


@hookimpl
def cnnviz_methods():
    return [Deconvnet]
