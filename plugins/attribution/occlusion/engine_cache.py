"""Traced models (incremental occlusion engines) kept between runs: at most a
few, and never one of a model the user has let go (the cache holds its
models weakly, and an engine holds its model only weakly too)."""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Any, Callable


class EngineCache:
    """Engines by (module, key): the module weakly, the ``size`` most recently
    used engines strongly."""

    def __init__(self, size: int = 2):
        self.size = size
        self._by_module: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
        self._recent: "collections.OrderedDict[tuple[int, tuple], weakref.ref]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, module, key: tuple, build: Callable[[], Any]):
        """The engine of ``module`` under ``key``, built (outside the lock) when missing."""
        with self._lock:
            engine = self._by_module.get(module, {}).get(key)
            if engine is not None:
                self._recent.move_to_end((id(module), key))
                return engine
        engine = build()
        with self._lock:
            self._by_module.setdefault(module, {})[key] = engine
            self._recent[(id(module), key)] = weakref.ref(module)
            for stale in [entry for entry, owner in self._recent.items() if owner() is None]:
                del self._recent[stale]  # a model already collected (its id may come back for another)
            while len(self._recent) > self.size:
                (_, old_key), owner = self._recent.popitem(last=False)
                engines = self._by_module.get(owner()) if owner() is not None else None
                if engines is not None:
                    engines.pop(old_key, None)
        return engine

    def __len__(self) -> int:
        with self._lock:
            return sum(len(engines) for engines in self._by_module.values())

    def clear(self) -> None:
        with self._lock:
            self._by_module = weakref.WeakKeyDictionary()
            self._recent.clear()
