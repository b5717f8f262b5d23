"""A safe serializer for the resumable state of analyses: numpy arrays go into
an ``.npz`` (read back with ``allow_pickle=False``), everything around them
into a JSON record stored beside them in the same file. Nothing is ever
unpickled, so a file planted where a checkpoint is looked for can fail to
parse but can never run code.

Supported values: None, bools, ints, floats, strings, numpy scalars and arrays
(object arrays only when they hold strings), lists, tuples and dicts with
string or integer keys, nested freely."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

RECORD = "__record__"  # the npz member holding the JSON record (UTF-8 bytes as uint8)


class StateError(ValueError):
    """A value the codec cannot write, or a file it cannot read."""


def dumps(record: dict[str, Any]) -> bytes:
    """The bytes of an .npz holding ``record`` (arrays anywhere inside it)."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(record, arrays, "state")
    text = json.dumps(tree, allow_nan=True, separators=(",", ":"))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{RECORD: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)})
    return buffer.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """The record written by :func:`dumps`; StateError for anything else."""
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise StateError("not a cnnviz state file (not an .npz)")
        with archive:
            if RECORD not in archive.files:
                raise StateError("not a cnnviz state file")
            arrays = {name: archive[name] for name in archive.files}
        tree = json.loads(arrays.pop(RECORD).tobytes().decode("utf-8"))
    except StateError:
        raise
    except (ValueError, OSError, EOFError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise StateError(f"cannot read the state file: {type(error).__name__}: {error}") from None
    value = _decode(tree, arrays)
    if not isinstance(value, dict):
        raise StateError("the state file does not hold a record")
    return value


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return {"$scalar": _store(np.asarray(value), arrays, path)}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            if not all(isinstance(item, str) for item in value.flat):
                raise StateError(f"{path}: an object array can be saved only when it holds strings")
            return {"$array": _store(value.astype(str), arrays, path), "object": True}
        return {"$array": _store(value, arrays, path)}
    if isinstance(value, list):
        return [_encode(item, arrays, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, arrays, f"{path}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise StateError(f"{path}: dict keys must be strings or integers, not {type(key).__name__}")
            items.append([key, _encode(item, arrays, f"{path}[{key!r}]")])
        return {"$dict": items}
    raise StateError(f"{path}: a {type(value).__name__} cannot be saved; keep state in numpy arrays, lists, "
                     "dicts, numbers or strings")


def _store(array: np.ndarray, arrays: dict[str, np.ndarray], path: str) -> str:
    if array.dtype.hasobject:
        raise StateError(f"{path}: arrays of Python objects cannot be saved")
    name = f"a{len(arrays)}"
    arrays[name] = array
    return name


def _decode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_decode(item, arrays) for item in tree]
    if isinstance(tree, dict) and len(tree) >= 1:
        if "$array" in tree and set(tree) <= {"$array", "object"}:
            array = _array(tree["$array"], arrays)
            return array.astype(object) if tree.get("object") is True else array
        if set(tree) == {"$scalar"}:
            return _array(tree["$scalar"], arrays)[()]
        if set(tree) == {"$tuple"} and isinstance(tree["$tuple"], list):
            return tuple(_decode(item, arrays) for item in tree["$tuple"])
        if set(tree) == {"$dict"} and isinstance(tree["$dict"], list):
            items = {}
            for pair in tree["$dict"]:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))):
                    raise StateError("malformed dict in the state file")
                items[pair[0]] = _decode(pair[1], arrays)
            return items
    raise StateError(f"unexpected entry in the state file: {str(tree)[:80]}")


def _array(name: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if not isinstance(name, str) or name not in arrays:
        raise StateError(f"the state file names a missing array {name!r}")
    return arrays[name]
