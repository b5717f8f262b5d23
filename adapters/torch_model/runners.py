"""The forward runners a torch model offers (the contract's
``forward_runners``): eager torch on the model's device with channels-last
batches (the faster NHWC convolutions), and onnxruntime on the model's ONNX
copy (exported once and cached on disk; see :mod:`cnnviz_adapters.onnx_runtime_cache`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cnnviz_core.model_facts import ForwardRunner


def forward_runners(adapter) -> dict[str, Callable[[], ForwardRunner]]:
    return {"torch": lambda: eager(adapter), "onnxruntime": lambda: onnx_copy(adapter)}


def eager(adapter) -> ForwardRunner:
    module = adapter.module

    def forward(batch: torch.Tensor) -> np.ndarray:
        return module(batch).float().cpu().numpy()

    return ForwardRunner("torch", forward, takes="torch", device=str(adapter.device), channels_last=True)


def onnx_copy(adapter) -> ForwardRunner:
    """Export (or find in the cache) the model's ONNX copy and open a session
    on it; export and load errors propagate."""
    from ..onnx_runtime_cache import cached_session

    session, cached = cached_session(adapter)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        (logits,) = session.run([output_name], {input_name: batch})
        return np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)

    facts = {"onnx_cache": cached.describe(), "providers": list(session.get_providers())}
    return ForwardRunner("onnxruntime", forward, takes="numpy", device="cpu", facts=facts)
