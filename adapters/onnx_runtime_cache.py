"""ONNX copies of torch models for forward-only work, exported on demand and
cached on disk, keyed by what the exported graph depends on: the weights and
buffers, the architecture, the input size, the opset and the torch version.

The cache folder is ``$CNNVIZ_CACHE`` or ``~/.cache/cnnviz`` (files under
``onnx/``). Writes are atomic: the export goes to a temporary file in the same
folder, is flushed to disk, then renamed, so a crash or a concurrent run never
leaves a half-written model under the final name. Within a process the
fingerprint of an unchanged module and the onnxruntime sessions are kept, so
a second run on the same model neither hashes its weights nor builds its
session again; a session is let go once the last torch module it was exported
from is garbage-collected, and only the latest few are kept."""

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

from cnnviz_core import atomic, notes, runtime_tuning
from cnnviz_core.errors import InputError, ModelLoadError

from .onnx_adapter import providers_for
from .onnx_export import OPSET, export_onnx
from .torch_adapter import TorchAdapter
from .torch_model.digest import module_digest

CACHE_ENV = notes.CACHE_ENV
MAX_SESSIONS = 2  # sessions hold a copy of the weights: keep only the latest few

_sessions: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_users: "dict[str, weakref.WeakSet]" = {}  # model file → the live torch modules it is the ONNX copy of
_lock = threading.Lock()


def cache_folder() -> str:
    """Where exported models are kept: onnx/ in the cache folder ($CNNVIZ_CACHE, else ~/.cache/cnnviz)."""
    return os.path.join(notes.cache_root(), "onnx")


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
    key = (os.path.abspath(path), os.path.getmtime(path), repr(providers), runtime_tuning.threads())
    with _lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = runtime_tuning.threads() or 0  # --threads / a worker's share; 0: onnxruntime's default
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


def _tie(module: torch.nn.Module, path: str) -> None:
    """Let the sessions on ``path`` go when no live module uses it any more."""
    path = os.path.abspath(path)
    with _lock:
        users = _users.setdefault(path, weakref.WeakSet())
        if module in users:
            return
        users.add(module)
    weakref.finalize(module, _release, path)


def _release(path: str) -> None:
    with _lock:
        users = _users.get(path)
        if users is not None and any(True for _ in users):
            return  # another live module shares this copy (equal weights)
        _users.pop(path, None)
        for key in [key for key in _sessions if key[0] == path]:
            del _sessions[key]


def cached_session(adapter: TorchAdapter) -> tuple[object, CachedModel]:
    """The adapter's cached ONNX copy (exported now if missing) and an
    onnxruntime session on it for the adapter's device. A cached file that
    onnxruntime cannot read (damaged on disk) is exported again, once."""
    model = cached_onnx(adapter)
    try:
        session = session_for(model.path, adapter.device)
    except ModelLoadError:
        if model.exported:
            raise
        os.remove(model.path)
        model = cached_onnx(adapter)
        session = session_for(model.path, adapter.device)
    _tie(adapter.module, model.path)
    return session, model
