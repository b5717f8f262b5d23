"""Occlusion runner decisions kept on disk, so that a later process on the
same model, input and machine skips the timing probe and the batch tuning.

A decision is kept as a note (``cnnviz_core.notes``: one JSON file in the
cnnviz cache folder, written atomically) under a key naming everything the
timings depend on: the model's weights digest, the input shape, the window
and stride, the device, the candidate runners, torch's and onnxruntime's
versions, the CPU model and torch's thread count. Any change gives another
key, so the next run probes again. A damaged or foreign entry is ignored (and
replaced by the next decision): the cache is a shortcut, never an error."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform

from cnnviz_core import notes

PREFIX = "occlusion_runner|"
VERSION = 1  # bump when the record's meaning changes: older records are then ignored


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform tells."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def onnxruntime_version() -> str | None:
    """Read from the installed package's metadata: no import of onnxruntime."""
    from importlib import metadata

    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def key_fields(digest: str, shape, window, stride, device: str, forward_batch: int, candidates) -> dict:
    """What a runner decision depends on, as a JSON object (kept in the record, readable)."""
    import torch

    return {"version": VERSION, "weights": digest, "input": list(shape), "window": list(window),
            "stride": str(stride), "device": device, "batch": int(forward_batch),
            "candidates": sorted(candidates), "torch": torch.__version__, "onnxruntime": onnxruntime_version(),
            "cpu": cpu_model(), "threads": torch.get_num_threads()}


def note_key(fields: dict) -> str:
    text = json.dumps(fields, sort_keys=True)
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass
class Record:
    """A decision as kept: the runner, the probe's timings, the batch size
    (None: not tuned yet) and the chosen runner's ms per window at that size,
    the figure a later run's speed is checked against."""

    chosen: str
    probe_ms_per_window: dict[str, float]
    batch_size: int | None
    ms_per_window: float

    def to_json(self, fields: dict) -> dict:
        return {"key": fields, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, value, fields: dict) -> Record | None:
        """The record, or None when the entry is missing, damaged or another key's."""
        if not isinstance(value, dict) or value.get("key") != fields:
            return None
        try:
            chosen, batch, ms = value["chosen"], value["batch_size"], float(value["ms_per_window"])
            probe = {str(k): float(v) for k, v in dict(value["probe_ms_per_window"]).items()}
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(chosen, str) or chosen not in fields["candidates"] or not ms > 0:
            return None
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
            return None
        return cls(chosen, probe, batch, ms)


def load(fields: dict) -> Record | None:
    return Record.from_json(notes.read(note_key(fields)), fields)


def store(fields: dict, record: Record) -> None:
    notes.write(note_key(fields), record.to_json(fields))


def drop(fields: dict) -> None:
    """Forget the decision (the next run under this key probes again)."""
    notes.write(note_key(fields), None)
