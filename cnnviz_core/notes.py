"""Small facts worth keeping between processes (for example that tracing a
model for incremental occlusion would save too little), as JSON values by key
in ``notes.json`` of the cnnviz cache folder: ``$CNNVIZ_CACHE``, else
``~/.cache/cnnviz``. A note is a shortcut only: a lost or damaged notes file
costs recomputing it, never an error."""

from __future__ import annotations

import json
import os

from . import atomic

CACHE_ENV = "CNNVIZ_CACHE"
NOTES = "notes.json"


def cache_root() -> str:
    """cnnviz's cache folder: $CNNVIZ_CACHE, else $XDG_CACHE_HOME/cnnviz, else ~/.cache/cnnviz."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cnnviz")


def _load() -> dict:
    try:
        with open(os.path.join(cache_root(), NOTES), encoding="utf-8") as stream:
            notes = json.load(stream)
    except (OSError, ValueError):
        return {}
    return notes if isinstance(notes, dict) else {}


def read(key: str):
    """The value noted under ``key``, or None."""
    return _load().get(key)


def write(key: str, value) -> None:
    """Note a small JSON value under ``key`` (atomic; a concurrent writer's
    note may be lost, which only costs recomputing it)."""
    notes = _load()
    notes[key] = value
    try:
        os.makedirs(cache_root(), exist_ok=True)
        atomic.write_json(os.path.join(cache_root(), NOTES), notes)
    except OSError:
        pass  # a read-only cache only loses the shortcut
