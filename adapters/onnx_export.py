"""Export a torch-adapted model to ONNX with a JSON sidecar that carries its
preprocessing and labels, so the ONNX copy loads with the same settings."""

from __future__ import annotations

import json
import os
import warnings

import torch

from cnnviz_core import atomic
from cnnviz_core.errors import InputError

from cnnviz_core.toolkit.hooks import eval_mode
from .onnx_adapter import sidecar_path
from .torch_adapter import TorchAdapter
from .torch_model.stages import stages_for_export
from .torch_model.tokens import tokens_for_export

OPSET = 17


def export_onnx(adapter, path: str | os.PathLike, opset: int = OPSET, dynamic_batch: bool = True) -> str:
    """Write ``path`` and ``path.json``; both appear complete or not at all:
    each is written to a temporary file beside it, then the sidecar is renamed
    into place and the model last (an older model at ``path`` is removed just
    before), so a model is never visible without its complete sidecar."""
    if not isinstance(adapter, TorchAdapter):
        raise InputError(f"only torch models can be exported to ONNX; {adapter.name!r} is a {adapter.kind} model")
    path = os.fspath(path)
    module = adapter.module
    device = next(module.parameters(), torch.zeros(0)).device  # a parameter-free module runs on the CPU
    dummy = torch.zeros((1, 3, *adapter.config.input_size), device=device)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    sidecar = {
        "name": adapter.name,
        "source": "cnnviz export-onnx",
        "config": adapter.config.to_dict(),
        "labels": list(adapter.labels) if adapter.labels is not None else None,
        "stages": stages_for_export(adapter),  # module names: the ONNX copy answers stage_outputs() the same
        "token_layers": tokens_for_export(adapter),  # a transformer's token layers, read as maps by the ONNX copy too
    }

    def write_model(temporary: str) -> None:
        with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (dummy,), temporary, input_names=["input"], output_names=["logits"],
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )

    def write_sidecar(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(sidecar, stream, indent=2)
            stream.write("\n")

    atomic.publish_together([(sidecar_path(path), write_sidecar), (path, write_model)])
    return path
