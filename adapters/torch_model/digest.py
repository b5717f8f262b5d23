"""A digest of what a torch module computes with: its class, printed
architecture and every parameter and buffer, remembered per module (weakly,
so a dropped model is freed) until one of its tensors changes."""

from __future__ import annotations

import hashlib
import threading
import weakref

import torch

_fingerprints: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _state_signature(module: torch.nn.Module) -> tuple:
    """Cheap identity of the module's tensors: an in-place update bumps a
    tensor's version counter, a replaced tensor has a new storage."""
    tensors = module.state_dict(keep_vars=True)
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype)) for name, t in tensors.items())


def _weights_digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    hasher.update(type(module).__module__.encode() + b"." + type(module).__qualname__.encode())
    hasher.update(repr(module).encode())  # the architecture as torch prints it
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(data.view(torch.uint8).numpy())  # the bytes, without a copy
    return hasher.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of the module's class, printed architecture and every parameter
    and buffer; remembered per module until one of its tensors changes."""
    signature = _state_signature(module)
    with _lock:
        known = _fingerprints.get(module)
    if known is not None and known[0] == signature:
        return known[1]
    digest = _weights_digest(module)
    with _lock:
        _fingerprints[module] = (signature, digest)
    return digest
