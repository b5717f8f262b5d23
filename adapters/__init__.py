"""Model adapters shipped with cnnviz (installed as ``cnnviz_adapters``):
PyTorch (timm names and any nn.Module) and ONNX (onnxruntime, gradient free)."""
