"""Plugin contributing the ONNX adapter."""

from cnnviz_core import hookimpl

from .onnx_adapter import OnnxAdapter


@hookimpl
def cnnviz_adapters():
    return [OnnxAdapter]
