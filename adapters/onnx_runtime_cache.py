"""ONNX copies of torch models for forward-only work, exported on demand and
cached on disk, keyed by what the exported graph depends on: the weights and
buffers, the architecture, the input size, the opset and the torch version.

The cache folder is ``$CNNVIZ_CACHE`` or ``~/.cache/cnnviz`` (files under
``onnx/``). Writes are atomic: the export goes to a temporary file in the same
folder, is flushed to disk, then renamed, so a crash or a concurrent run never
leaves a half-written model under the final name. Within a process the
fingerprint of an unchanged module and the onnxruntime sessions are kept, so
a second run on the same model neither hashes its weights nor builds its
session again."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import tempfile
import threading
import time
import weakref

import torch

from cnnviz_core import atomic
from cnnviz_core.errors import InputError, ModelLoadError

from .onnx_adapter import providers_for
from .onnx_export import OPSET, export_onnx
from .torch_adapter import TorchAdapter

CACHE_ENV = "CNNVIZ_CACHE"
MAX_SESSIONS = 2  # sessions hold a copy of the weights: keep only the latest few

_fingerprints: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_sessions: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_lock = threading.Lock()


def cache_folder() -> str:
    """Where exported models are kept: $CNNVIZ_CACHE, else ~/.cache/cnnviz."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cnnviz")
    return os.path.join(root, "onnx")


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


def fingerprint(adapter: TorchAdapter) -> str:
    """The cache key of an adapter's ONNX copy."""
    parts = [module_digest(adapter.module), "x".join(map(str, adapter.config.input_size)), f"opset{OPSET}", torch.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclasses.dataclass
class CachedModel:
    path: str
    key: str
    exported: bool  # False: found in the cache
    export_s: float  # 0 when found in the cache

    def describe(self) -> dict:
        return {"path": self.path, "key": self.key[:16], "exported_now": self.exported, "export_s": round(self.export_s, 3)}


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "model"


def cached_onnx(adapter: TorchAdapter) -> CachedModel:
    """The adapter's ONNX export (dynamic batch) from the cache, exported now
    when missing. Export errors propagate (the caller decides whether that is
    fatal)."""
    if not isinstance(adapter, TorchAdapter):
        raise InputError(f"only torch models are exported to ONNX; {adapter.name!r} is a {adapter.kind} model")
    key = fingerprint(adapter)
    folder = cache_folder()
    path = os.path.join(folder, f"{_stem(adapter.name)}-{key[:24]}.onnx")
    if os.path.isfile(path):
        return CachedModel(path, key, exported=False, export_s=0.0)
    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".tmp-export-", dir=folder) as scratch:
        staged = export_onnx(adapter, os.path.join(scratch, "model.onnx"), dynamic_batch=True)
        with open(staged, "rb") as stream:
            os.fsync(stream.fileno())
        # the record first: a model file present under its final name is complete
        atomic.write_json(path + ".json", {
            "name": adapter.name, "key": key, "input_size": list(adapter.config.input_size),
            "opset": OPSET, "torch": torch.__version__, "source": "cnnviz onnx runtime cache",
        })
        os.replace(staged, path)
    return CachedModel(path, key, exported=True, export_s=time.perf_counter() - started)


def session_for(path: str, device: str = "cpu"):
    """An onnxruntime session on ``path`` for ``device`` (providers as the ONNX
    adapter picks them), kept for later calls in this process."""
    import onnxruntime

    providers = providers_for(device)
    key = (os.path.abspath(path), os.path.getmtime(path), repr(providers))
    with _lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as error:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {str(error).splitlines()[0][:300]}") from None
    with _lock:
        _sessions[key] = session
        while len(_sessions) > MAX_SESSIONS:
            _sessions.popitem(last=False)
    return session


def clear_sessions() -> None:
    """Forget the kept sessions (their memory goes back)."""
    with _lock:
        _sessions.clear()


def cached_session(adapter: TorchAdapter) -> tuple[object, CachedModel]:
    """The adapter's cached ONNX copy (exported now if missing) and an
    onnxruntime session on it for the adapter's device. A cached file that
    onnxruntime cannot read (damaged on disk) is exported again, once."""
    model = cached_onnx(adapter)
    try:
        return session_for(model.path, adapter.device), model
    except ModelLoadError:
        if model.exported:
            raise
        os.remove(model.path)
        model = cached_onnx(adapter)
        return session_for(model.path, adapter.device), model


# -- small facts about a model worth keeping between processes ----------------
NOTES = "notes.json"


def read_note(key: str):
    """A value noted earlier under ``key`` in the cache folder, or None."""
    import json

    try:
        with open(os.path.join(cache_folder(), NOTES), encoding="utf-8") as stream:
            notes = json.load(stream)
    except (OSError, ValueError):
        return None
    return notes.get(key) if isinstance(notes, dict) else None


def write_note(key: str, value) -> None:
    """Note a small JSON value under ``key`` (atomic; a concurrent writer's
    note may be lost, which only costs recomputing it)."""
    import json

    path = os.path.join(cache_folder(), NOTES)
    try:
        with open(path, encoding="utf-8") as stream:
            notes = json.load(stream)
        notes = notes if isinstance(notes, dict) else {}
    except (OSError, ValueError):
        notes = {}
    notes[key] = value
    try:
        atomic.write_json(path, notes)
    except OSError:
        pass  # a read-only cache only loses the shortcut
