"""The deconv-approach experiment as a cnnviz plugin: one neuron's (or one
channel's) gradient backpropagated to the image with the plain backward."""

from cnnviz_core import hookimpl
from cnnviz_core.errors import TargetError

from cnnviz_core.toolkit.input_gradient import InputGradient


class NeuronGradient(InputGradient):
    """Neuron gradient: set one unit's gradient to 1, all others to 0, backpropagate to the image (--target layer:channel[@y,x])."""

    name = "neuron_gradient"
    explains = "neuron"

    @classmethod
    def demo_target(cls, adapter, inputs):
        """The default layer's most active channel on the demo images."""
        import torch

        from cnnviz_core.toolkit.hooks import capture_outputs

        layer = adapter.default_layer()
        with capture_outputs({layer: adapter.get_layer(layer)}) as outputs, adapter.session(), torch.inference_mode():
            adapter.module(adapter.tensor(inputs))
        channel = int(outputs[layer].float().mean(dim=(0, 2, 3)).argmax())
        return f"{layer}:{channel}"

    def check_targets(self, targets) -> None:
        for target in targets:
            if target.kind != "neuron":
                raise TargetError(
                    f"neuron_gradient needs a neuron target: --target layer:channel or layer:channel@y,x "
                    f"(got {target.describe()}); list layers with `cnnviz models --layers MODEL`"
                )
        super().check_targets(targets)


@hookimpl
def cnnviz_methods():
    return [NeuronGradient]
