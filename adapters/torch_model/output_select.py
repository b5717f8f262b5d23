"""Models whose forward returns more than the logits — a tuple (logits and
auxiliary logits), a dict (``{"out": ..., "aux": ...}``), a named tuple —
made to return one entry: the adapter's ``output=`` option (``--output-key``).

The selecting module *adopts* the user's module instead of wrapping it: it
shares its submodules, parameters and buffers (the same dicts), so layer names,
parameters, state dict, hooks and devices are the model's own, and the user's
module is never changed. Its train/eval flag is the model's."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnviz_core.errors import InputError


class Adopting(nn.Module):
    """A module that runs the user's model with something around it while
    being, to everything that inspects it, that model: the same submodules,
    parameters and buffers (shared dicts), attributes and train/eval flag."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        object.__setattr__(self, "_model", model)  # last (the training flag is the model's from here) and not a submodule

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            model = self.__dict__.get("_model")
            if model is None:
                raise
            return getattr(model, name)  # the model's own attributes (num_classes, pretrained_cfg)

    @property
    def training(self) -> bool:  # the model's own flag: its forward may read it (distilled heads)
        model = self.__dict__.get("_model")
        return True if model is None else model.training

    @training.setter
    def training(self, value: bool) -> None:
        model = self.__dict__.get("_model")
        if model is not None:
            model.training = value


class SelectedOutput(Adopting):
    def __init__(self, model: nn.Module, output: str | int):
        super().__init__(model)
        self.output = output

    def forward(self, *args, **kwargs):
        return select(self._model(*args, **kwargs), self.output, type(self._model).__name__)

    def extra_repr(self) -> str:
        return f"{type(self._model).__name__}, output={self.output!r}"


def entries(outputs: Any) -> list:
    """The keys (dict, named tuple) or indices (tuple, list) of a model's outputs."""
    if isinstance(outputs, dict):
        return list(outputs)
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):
        return list(outputs._fields)
    if isinstance(outputs, (tuple, list)):
        return list(range(len(outputs)))
    return []


def select(outputs: Any, output: str | int, model_name: str = "the model") -> torch.Tensor:
    """The entry ``output`` of what the model returned; InputError naming the available entries otherwise."""
    if isinstance(outputs, torch.Tensor):
        raise InputError(f"output={output!r} asked for, but {model_name} returns one tensor {tuple(outputs.shape)}: "
                         "leave out the output option")
    available = entries(outputs)
    key = output
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields") and isinstance(output, str):
        key = outputs._fields.index(output) if output in outputs._fields else None
    elif isinstance(outputs, (tuple, list)) and isinstance(output, str) and output.lstrip("-").isdigit():
        key = int(output)
    try:
        value = outputs[key] if key is not None else None
    except (KeyError, IndexError, TypeError):
        value = None
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{model_name} has no tensor output {output!r}; its outputs: {describe(outputs)}")
    return value


def describe(outputs: Any) -> str:
    """Each entry and its shape: ``'out' (2, 21, 64, 64), 'aux' (2, 21, 64, 64)``."""
    parts = []
    for key in entries(outputs):
        value = outputs[key] if not (isinstance(outputs, tuple) and hasattr(outputs, "_fields")) else getattr(outputs, key)
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        parts.append(f"{key!r} {shape}")
    return ", ".join(parts) or type(outputs).__name__


def unselected(outputs: Any, model_name: str) -> InputError:
    """The error for a model that returned several outputs where logits were needed."""
    return InputError(f"{model_name} returns a {type(outputs).__name__} of outputs ({describe(outputs)}), not one "
                      "logits tensor: choose one with load_model(..., output=KEY_OR_INDEX) or --output-key KEY")
