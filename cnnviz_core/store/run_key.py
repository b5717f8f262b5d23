"""What makes two dataset runs the same run: the model and its weights digest,
the methods and their parameters, the target, the dataset, the map dtype and
the chunking. A store is resumed only by a run with the same key; any
difference is named in the error."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ..errors import InputError
from . import layout

STORE_FORMAT = 1


def run_key(adapter, methods, target, source, dtype: str, chunk_size: int, batch_size: int) -> dict[str, Any]:
    weights = adapter.weights_digest()
    if weights is None:
        raise InputError(f"{adapter.name} cannot tell its weights apart (no weights digest), so a dataset run on it "
                         "could resume another model's store; give a model whose adapter has weights_digest()")
    model = {k: v for k, v in adapter.describe().items() if k not in ("device", "providers")}
    key = {
        "format": STORE_FORMAT,
        "model": model,
        "weights": weights,
        "methods": {m.name: dataclasses.asdict(m.params) for m in methods},
        "target": target,
        "dataset": source.description,
        "length": source.length,
        "dtype": dtype,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # what run.json will hold, compared alike


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences between two keys, by field."""
    named = {"weights": "model weights (digest)", "methods": "methods or their parameters", "model": "model",
             "dtype": "map dtype", "chunk_size": "chunk size", "batch_size": "batch size"}
    found = []
    for field in sorted(set(saved) | set(wanted)):
        if saved.get(field) != wanted.get(field):
            found.append(f"{named.get(field, field)}: stored {_short(saved.get(field))}, now {_short(wanted.get(field))}")
    return found


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def read_record(out: str) -> dict[str, Any] | None:
    path = os.path.join(out, layout.RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} cannot be read ({error}); remove {out} or run with --overwrite") from None
    if not isinstance(record, dict) or not isinstance(record.get("key"), dict):
        raise InputError(f"{path} is not a cnnviz dataset-run record; remove {out} or run with --overwrite")
    return record
