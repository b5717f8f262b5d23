"""Export a torch-adapted model to ONNX with a JSON sidecar that carries its
preprocessing and labels, so the ONNX copy loads with the same settings."""

from __future__ import annotations

import os
import tempfile
import warnings

import torch

from cnnviz_core import atomic
from cnnviz_core.errors import InputError

from cnnviz_core.toolkit.hooks import eval_mode
from .onnx_adapter import sidecar_path
from .torch_adapter import TorchAdapter

OPSET = 17


def export_onnx(adapter, path: str | os.PathLike, opset: int = OPSET, dynamic_batch: bool = True) -> str:
    """Write ``path`` and ``path.json``; both appear complete or not at all."""
    if not isinstance(adapter, TorchAdapter):
        raise InputError(f"only torch models can be exported to ONNX; {adapter.name!r} is a {adapter.kind} model")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    module = adapter.module
    device = next(module.parameters(), torch.zeros(0)).device  # a parameter-free module runs on the CPU
    dummy = torch.zeros((1, 3, *adapter.config.input_size), device=device)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
    os.close(handle)
    try:
        with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (dummy,), temporary, input_names=["input"], output_names=["logits"],
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    atomic.write_json(sidecar_path(path), {
        "name": adapter.name,
        "source": "cnnviz export-onnx",
        "config": adapter.config.to_dict(),
        "labels": list(adapter.labels) if adapter.labels is not None else None,
    })
    return path
