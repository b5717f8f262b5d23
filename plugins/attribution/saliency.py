"""Class saliency maps (Simonyan, Vedaldi & Zisserman 2014) as a cnnviz plugin."""

from cnnviz_core import hookimpl
from cnnviz_core.toolkit import InputGradient


class Saliency(InputGradient):
    """Saliency: max over colour channels of |∂score/∂x| (Simonyan et al. 2014); the signed gradient is kept."""

    name = "saliency"
    accepts = InputGradient.accepts | InputGradient.output_kinds  # multilabel, region, detection, callables too


@hookimpl
def cnnviz_methods():
    return [Saliency]
