"""Weights swapped into a torch module for the length of a ``with`` block
(the contract's ``with_weights``), and the originals copied back on exit — on
success and on error — so the module afterwards equals the module before, bit
for bit, on the device it was on."""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np
import torch


@contextlib.contextmanager
def swapped_weights(adapter, overrides: Mapping[str, np.ndarray]) -> Iterator[None]:
    names = adapter.check_overrides(overrides)
    parameters = [adapter.module.get_parameter(names[name]) for name in overrides]
    originals = [parameter.detach().clone() for parameter in parameters]
    try:
        with torch.no_grad():
            for parameter, array in zip(parameters, overrides.values()):
                parameter.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(parameter.device, parameter.dtype))
        yield
    finally:
        with torch.no_grad():
            for parameter, original in zip(parameters, originals):
                parameter.copy_(original)
