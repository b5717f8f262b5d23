"""Plugin contributing the PyTorch adapter."""

from cnnviz_core import hookimpl

from .torch_adapter import TorchAdapter


@hookimpl
def cnnviz_adapters():
    return [TorchAdapter]
