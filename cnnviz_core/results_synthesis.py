"""The result of a synthesis method: images in [0, 1] plus the history of the
objective, rendered and saved like every other result."""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from typing import Any, Sequence

import numpy as np

from . import atomic, render
from .targets import Target


@dataclasses.dataclass
class SynthesisResult:
    """``images``: (B, 3, H, W) float32 in [0, 1];
    ``history``: curve name → (B, steps) (``objective`` is the one optimized);
    ``classes`` / ``scores``: the model's top-1 class and probability on each
    final image, where the method reports them;
    ``pictures``: further (B, 3, H, W) renderings (for example the amplified
    adversarial perturbation); ``extras``: further per-item arrays;
    ``records``: per-item facts (JSON-able), also in the saved record;
    ``inputs``: the starting images in [0, 1], for methods that have them."""

    method: str
    model: dict[str, Any]
    params: dict[str, Any]
    targets: list[Target]
    names: list[str]
    labels: Sequence[str] | None
    images: np.ndarray
    history: dict[str, np.ndarray]
    classes: np.ndarray | None = None
    scores: np.ndarray | None = None
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    inputs: np.ndarray | None = None
    higher_is_better: bool = True
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind = "synthesis"

    def label(self, index: int) -> str:
        if self.classes is None:
            return self.targets[index].describe(self.labels)
        cls = int(self.classes[index])
        name = self.labels[cls] if self.labels is not None and 0 <= cls < len(self.labels) else str(cls)
        probability = f" (p={float(self.scores[index]):.3f})" if self.scores is not None else ""
        return f"{cls} {name}{probability}"

    # -- rendering ---------------------------------------------------------
    def renderings(self, index: int) -> dict[str, np.ndarray]:
        """RGB uint8 pictures of one item by file suffix; "image" is the result."""
        out = {"image": render.image_to_uint8(self.images[index])}
        for key, pictures in self.pictures.items():
            out[key] = render.image_to_uint8(pictures[index])
        return out

    def history_plot(self) -> np.ndarray:
        from .plots import line_plot

        curves = {}
        for key, values in self.history.items():
            for i, name in enumerate(self.names):
                label = f"{name} {key}" if len(self.history) > 1 else name
                curves[label] = values[i]
        return line_plot(curves, title=f"{self.method}: history", ylabel="value")

    def _repr_png_(self) -> bytes:
        rows = [list(self.renderings(i).values()) for i in range(len(self.images))]
        return render.png_bytes(render.tile(rows))

    def _repr_html_(self) -> str:
        parts = [f"<div><b>{html.escape(self.method)}</b> on {html.escape(str(self.model.get('name')))}</div>"]
        for i in range(len(self.images)):
            for key, picture in self.renderings(i).items():
                png = base64.b64encode(render.png_bytes(picture)).decode()
                parts.append(
                    f"<figure style='display:inline-block'><img src='data:image/png;base64,{png}'>"
                    f"<figcaption>{html.escape(self.names[i])} {html.escape(key)}: {html.escape(self.label(i))}</figcaption></figure>"
                )
        return "\n".join(parts)

    # -- saving ------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> list[str]:
        """Per item ``{name}.{method}.png`` (and ``.{picture}.png``); the raw
        arrays as ``{method}.{array}.npy``; the history chart and a JSON
        record. Every file is written atomically."""
        os.makedirs(folder, exist_ok=True)
        written = []
        for i, name in enumerate(self.names):
            for key, picture in self.renderings(i).items():
                suffix = "" if key == "image" else f".{key}"
                path = os.path.join(folder, f"{name}.{self.method}{suffix}.png")
                atomic.write_bytes(path, render.png_bytes(picture))
                written.append(path)
        arrays: dict[str, np.ndarray] = {"images": self.images, **{f"history.{k}": v for k, v in self.history.items()},
                                         **{f"pictures.{k}": v for k, v in self.pictures.items()}, **self.extras}
        if self.classes is not None:
            arrays["classes"] = self.classes
        if self.scores is not None:
            arrays["scores"] = self.scores
        for key, array in arrays.items():
            path = os.path.join(folder, f"{self.method}.{key}.npy")
            atomic.write_npy(path, array)
            written.append(path)
        if any(v.shape[-1] > 1 for v in self.history.values()):
            path = os.path.join(folder, f"{self.method}.history.png")
            atomic.write_bytes(path, render.png_bytes(self.history_plot()))
            written.append(path)
        record_path = os.path.join(folder, f"{self.method}.json")
        atomic.write_json(record_path, self.record(written))
        return written + [record_path]

    def record(self, files: list[str] | None = None) -> dict[str, Any]:
        items = []
        for i, name in enumerate(self.names):
            item = {"name": name, "target": self.targets[i].describe(self.labels),
                    "objective": {k: float(v[i][-1]) for k, v in self.history.items() if v.shape[-1]}}
            if self.classes is not None:
                item["class"] = int(self.classes[i])
                item["label"] = self.labels[int(self.classes[i])] if self.labels is not None else None
            if self.scores is not None:
                item["probability"] = float(self.scores[i])
            if i < len(self.records):
                item.update(self.records[i])
            items.append(item)
        return {
            "method": self.method,
            "kind": self.kind,
            "model": self.model,
            "params": self.params,
            "items": items,
            "arrays": {"images": list(self.images.shape)},
            "metadata": self.metadata,
            "files": sorted(os.path.basename(f) for f in files or []),
        }
