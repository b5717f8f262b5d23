"""The deconv-approach experiment as a cnnviz plugin: one neuron's (or one
channel's) gradient backpropagated to the image with the plain backward."""

from cnnviz_core import hookimpl, validate_targets
from cnnviz_core.toolkit import InputGradient, capture_outputs


class NeuronGradient(InputGradient):
    """Neuron gradient: backpropagate one unit (layer:channel@y,x) or a channel's spatial mean (layer:channel) to the image."""

    name = "neuron_gradient"
    explains = "neuron"
    accepts = frozenset({"neuron"})

    @classmethod
    def demo_target(cls, adapter, inputs):
        """The default layer's most active channel on the demo images."""
        import torch

        layer = adapter.default_layer()
        with capture_outputs({layer: adapter.get_layer(layer)}) as outputs, adapter.session(), torch.inference_mode():
            adapter.module(adapter.tensor(inputs))
        channel = int(outputs[layer].float().mean(dim=(0, 2, 3)).argmax())
        return f"{layer}:{channel}"

    def check_targets(self, targets) -> None:
        validate_targets(targets, self.accepts, self.name, self.adapter,
                         advice="list layers with `cnnviz models --layers MODEL`")


@hookimpl
def cnnviz_methods():
    return [NeuronGradient]
