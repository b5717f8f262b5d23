"""Atomic file writes: a temporary file in the same folder, then a rename, so a
crash never leaves a half-written output. Files get the mode an ordinary
``open`` would give them (0o666 less the umask), not mkstemp's private 0o600,
so a web server or a colleague can read what a run wrote."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
from typing import Callable, Sequence

import numpy as np


def _umask_from_proc() -> int | None:
    """The umask as Linux reports it (``Umask:`` in /proc/self/status, since
    4.7): read without changing it, so it is safe beside other threads."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    """os.umask can only be read by setting it; the process-wide value is
    restored at once, under a lock so no two readers interleave."""
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()
# read once at import where /proc cannot tell it later
_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_setting()


def current_umask() -> int:
    """The process umask now (from /proc where there is one, else as it was at import)."""
    mask = _umask_from_proc()
    return _UMASK_AT_IMPORT if mask is None else mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(handle, mode) as stream:
            os.fchmod(stream.fileno(), file_mode())
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def publish_together(files: Sequence[tuple[str | os.PathLike, Callable[[str], None]]]) -> None:
    """Write several files that belong together (a model and its sidecar) so
    that the LAST one is never visible without the others: each ``writer``
    fills a temporary path in its file's folder; once all are written they
    are renamed in order, the last one last (its old version is removed
    first, so it is never seen beside the others' new versions). On any
    error, nothing new is left: temporary files and renamed ones are removed."""
    staged: list[tuple[str, str]] = []
    published: list[str] = []
    try:
        for path, writer in files:
            path = os.fspath(path)
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
            os.close(handle)
            staged.append((temporary, path))
            writer(temporary)
            os.chmod(temporary, file_mode())  # after the writer: it may have replaced the file
        last = staged[-1][1]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(last)
        for temporary, path in staged:
            os.replace(temporary, path)
            published.append(path)
    except BaseException:
        for temporary, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        for path in published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise


def write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as stream:
        stream.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, record) -> None:
    write_text(path, json.dumps(record, indent=2, default=json_default) + "\n")


def write_npy(path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    write_bytes(path, buffer.getvalue())


def json_default(value):
    """How a record writes values JSON has no type for."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
