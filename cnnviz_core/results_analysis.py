"""The result of an analysis: named arrays, pictures and facts."""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from typing import Any

import numpy as np

from . import atomic, render, result_text
from .output_records import OutputPlan, RunIdentity


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
    saved_to: str | None = dataclasses.field(default=None, compare=False)  # the record's path, once saved

    kind = "analysis"

    def __getattr__(self, name: str):
        arrays = self.__dict__.get("arrays") or {}
        if name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or array {name!r}; arrays: {', '.join(arrays) or 'none'}")

    # -- in words ----------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """The findings that matter, from the facts analyses share by name:
        the layer and how many channels, filters or points; t-SNE's
        trustworthiness and k-NN accuracy; accuracy (or agreement) at 50 %
        and 90 % pruning sparsity; else the first few scalar facts."""
        facts, lines = self.facts, []
        counted = [f"{len(facts['channels'])} channels" if isinstance(facts.get("channels"), list) else None,
                   f"top {facts['top_k']} patches each" if "top_k" in facts else None,
                   f"{facts['filters_shown']} filters shown" if "filters_shown" in facts else None,
                   f"{facts['points']} points" if "points" in facts else None]
        counted = [c for c in counted if c]
        if "layer" in facts or counted:
            where = f"layer {facts['layer']}" if "layer" in facts else ""
            lines.append(", ".join(p for p in [where, *counted] if p))
        quality = [f"{label} {result_text.number(facts[key])}" for key, label in
                   (("trustworthiness", "trustworthiness"), ("knn_accuracy", "kNN accuracy")) if facts.get(key) is not None]
        if quality:
            lines.append(", ".join(quality))
        if isinstance(facts.get("sparsities"), list):
            lines += result_text.sparsity_levels(facts["sparsities"])
        if not lines:
            scalars = [(k, v) for k, v in facts.items() if isinstance(v, (int, float, str, bool))][:6]
            if scalars:
                lines.append(", ".join(f"{k} {result_text.number(v) if isinstance(v, float) else v}" for k, v in scalars))
        if self.metadata.get("images"):
            lines.append(f"over {self.metadata['images']} images" + (f" of {self.metadata['dataset']}" if self.metadata.get("dataset") else ""))
        return lines

    def __repr__(self) -> str:
        title = f"{self.method} on {result_text.model_name(self.model)}"
        arrays = "arrays " + (result_text.brief([f"{k} {tuple(v.shape)}" for k, v in self.arrays.items()]) or "none")
        pictures = "pictures " + (result_text.brief(list(self.pictures)) or "none")
        return result_text.compose(type(self).__name__, title, [arrays, pictures, *self.summary_lines()], [], self.saved_to)

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

    @classmethod
    def plan(cls, folder, method: str, model: dict, params: dict, dataset: str | None = None) -> OutputPlan:
        """What a run will write in ``folder``, for the clash check made before
        any work (``dataset``: its description, as the record keeps it)."""
        return OutputPlan(folder, f"{method}.json", [], RunIdentity.of(method, model, params, [dataset] if dataset else []))

    def output_plan(self, folder) -> OutputPlan:
        plan = self.plan(folder, self.method, self.model, self.params, self.metadata.get("dataset"))
        plan.files |= {f"{self.method}.{key}.png" for key in self.pictures} | {f"{self.method}.{key}.npy" for key in self.arrays}
        return plan

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> list[str]:
        """``{method}.{picture}.png``, ``{method}.{array}.npy`` and
        ``{method}.json`` (method, model, parameters, facts, files); each
        written atomically. A different run of the method already saved
        there (other model, parameters or dataset) is refused with
        InputError before anything is written, unless ``overwrite``."""
        plan = self.output_plan(folder).check(overwrite)
        os.makedirs(folder, exist_ok=True)
        plan.claim()
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
        plan.finish(written + [record_path])
        self.saved_to = record_path
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
