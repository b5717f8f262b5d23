"""The result of an analysis: named arrays, pictures and facts."""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from typing import Any

import numpy as np

from . import atomic, render


@dataclasses.dataclass
class AnalysisResult:
    """``arrays``: named numpy arrays (also readable as attributes:
    ``result.coordinates``); ``pictures``: named RGB uint8 (H, W, 3) images;
    ``facts``: JSON-able findings (scores, indices, per-layer tables)."""

    method: str
    model: dict[str, Any]
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    pictures: dict[str, np.ndarray]
    facts: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind = "analysis"

    def __getattr__(self, name: str):
        arrays = self.__dict__.get("arrays") or {}
        if name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or array {name!r}; arrays: {', '.join(arrays) or 'none'}")

    def _repr_png_(self) -> bytes | None:
        if not self.pictures:
            return None
        return render.png_bytes(next(iter(self.pictures.values())))

    def _repr_html_(self) -> str:
        parts = [f"<div><b>{html.escape(self.method)}</b> on {html.escape(str(self.model.get('name')))}</div>"]
        for key, picture in self.pictures.items():
            png = base64.b64encode(render.png_bytes(picture)).decode()
            parts.append(f"<figure style='display:inline-block'><img src='data:image/png;base64,{png}' style='max-width:480px'>"
                         f"<figcaption>{html.escape(key)}</figcaption></figure>")
        return "\n".join(parts)

    def save(self, folder: str | os.PathLike) -> list[str]:
        """``{method}.{picture}.png``, ``{method}.{array}.npy`` and
        ``{method}.json`` (method, model, parameters, facts, files); each
        written atomically."""
        os.makedirs(folder, exist_ok=True)
        written = []
        for key, picture in self.pictures.items():
            path = os.path.join(folder, f"{self.method}.{key}.png")
            atomic.write_bytes(path, render.png_bytes(picture))
            written.append(path)
        for key, array in self.arrays.items():
            path = os.path.join(folder, f"{self.method}.{key}.npy")
            atomic.write_npy(path, array)
            written.append(path)
        record_path = os.path.join(folder, f"{self.method}.json")
        atomic.write_json(record_path, self.record(written))
        return written + [record_path]

    def record(self, files: list[str] | None = None) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "model": self.model,
            "params": self.params,
            "facts": self.facts,
            "arrays": {k: list(v.shape) for k, v in self.arrays.items()},
            "metadata": self.metadata,
            "files": sorted(os.path.basename(f) for f in files or []),
        }
