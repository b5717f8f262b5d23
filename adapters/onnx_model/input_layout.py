"""How a foreign ONNX graph takes its image: channels first (B, C, H, W, as
PyTorch exports) or channels last (B, H, W, C, as TensorFlow exports), and in
which float type (float16 models). cnnviz hands every adapter a (B, 3, H, W)
float32 batch; these turn it into what the graph reads, and what the graph
returns back into float32."""

from __future__ import annotations

import numpy as np

from cnnviz_core.errors import InputError, ModelLoadError

LUMA = (0.299, 0.587, 0.114)  # as adapters/torch_model/input_channels.py
CHANNEL_COUNTS = (1, 3, 4)  # image channels a layout is recognised by
FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def channels_last(shape, path: str) -> bool:
    """Whether a 4-D input shape is (B, H, W, C): its last dimension is a
    channel count and its second is not (a symbolic dimension is not a
    channel count). (B, C, H, W) otherwise; ModelLoadError for other ranks."""
    if len(shape) != 4:
        raise ModelLoadError(f"{path} takes a {len(shape)}-D input {list(shape)}; cnnviz needs one image input "
                             "(B, 3, H, W) or (B, H, W, 3)")
    second, last = shape[1], shape[3]
    return last in CHANNEL_COUNTS and second not in CHANNEL_COUNTS


def takes_grey(shape, last: bool, path: str) -> bool:
    """Whether the graph reads one channel; ModelLoadError for a channel count other than 1 or 3."""
    channels = shape[3] if last else shape[1]
    if not isinstance(channels, int) or channels == 3:
        return False
    if channels == 1:
        return True
    raise ModelLoadError(f"{path} takes {channels}-channel inputs {list(shape)}; cnnviz feeds RGB images and one-channel "
                         f"models their luminance. Export a model that makes its {channels} channels from RGB")


def grey(batch: np.ndarray, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalized RGB → (B, 1, H, W): the luminance (BT.601) of
    the pixels, normalized with the luminance of the mean and std."""
    luma = np.asarray(LUMA, np.float32)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    pixels = np.asarray(batch, np.float32) * std[None, :, None, None] + mean[None, :, None, None]
    values = np.tensordot(luma, pixels, axes=([0], [1]))[:, None]
    return (values - float(luma @ mean)) / float(luma @ std)


def numpy_dtype(onnx_type: str, path: str):
    if onnx_type not in FLOAT_TYPES:
        raise ModelLoadError(f"{path} takes {onnx_type} input; cnnviz feeds images as float32, float16 or float64")
    return FLOAT_TYPES[onnx_type]


def as_graph_input(batch: np.ndarray, last: bool, dtype) -> np.ndarray:
    batch = np.asarray(batch, dtype=np.float32)
    if last:
        batch = batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(batch, dtype=dtype)


def as_float32(value) -> np.ndarray:
    """A float16 (or float64) tensor from the graph as float32; other types unchanged."""
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" and value.dtype != np.float32 else value


def output_name(outputs, choice, path: str) -> str:
    """The graph output holding the logits: ``choice`` by name or index (the
    load option ``output=``, ``--output-key``), else the first."""
    names = [output.name for output in outputs]
    if choice is None:
        return names[0]
    if str(choice) in names:
        return str(choice)
    if str(choice).lstrip("-").isdigit() and -len(names) <= int(choice) < len(names):
        return names[int(choice)]
    shown = ", ".join(f"{i}: {output.name!r} {list(output.shape)}" for i, output in enumerate(outputs))
    raise InputError(f"{path} has no output {choice!r}; its outputs: {shown}")
