"""Deconvnet (Zeiler & Fergus 2014) as a cnnviz plugin."""

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import InputGradient


class Deconvnet(InputGradient):
    """Deconvnet: through every ReLU-like module pass the ReLU of the gradient, whatever the forward input was."""

    name = "deconvnet"
    rule = "deconvnet"


@hookimpl
def cnnviz_methods():
    return [Deconvnet]
