"""Result objects: raw numpy arrays plus metadata; rendering and saving."""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from typing import Any, Sequence

import numpy as np

from . import atomic, render, result_text
from .output_records import OutputPlan, RunIdentity, item_stem, run_stem
from .targets import Target


@dataclasses.dataclass
class AttributionResult:
    """An attribution method's output.

    ``maps``: (B, H, W) float32 raw values at input resolution (never normalized);
    ``images``: (B, 3, H, W) image-space result for gradient methods, else None;
    ``classes`` / ``scores``: the class explained and its score on the clean input;
    ``extras``: further per-input arrays (for example occlusion's position grid);
    ``display``: the inputs as RGB in [0, 1], for overlays.
    """

    method: str
    model: dict[str, Any]
    params: dict[str, Any]
    targets: list[Target]
    names: list[str]
    labels: Sequence[str] | None
    maps: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    images: np.ndarray | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    display: np.ndarray | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    saved_to: str | None = dataclasses.field(default=None, compare=False)  # the record's path, once saved

    kind = "attribution"

    def label(self, index: int) -> str:
        cls = int(self.classes[index])
        if cls < 0:  # a neuron target, not a class
            return self.targets[index].describe()
        if self.labels is not None and cls < len(self.labels):
            return f"{cls} {self.labels[cls]}"
        return str(cls)

    # -- in words ----------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """One line per input: the class (or neuron) explained and its score."""
        return [f"{name}: explained {self.label(i)} (score {float(self.scores[i]):.4g})" for i, name in enumerate(self.names)]

    def __repr__(self) -> str:
        title = f"{self.method} on {result_text.model_name(self.model)}, {len(self.names)} input(s)"
        arrays = f"maps {result_text.shape(self.maps)}; images {result_text.shape(self.images)}"
        if self.extras:
            arrays += f"; extras {result_text.brief(list(self.extras))}"
        return result_text.compose(type(self).__name__, title, [arrays], self.summary_lines(), self.saved_to)

    # -- rendering ---------------------------------------------------------
    def renderings(self, index: int) -> dict[str, np.ndarray]:
        """The PNG renderings of one input, by file suffix: ``heatmap`` (the
        map's colours with a colour bar of its values under it; diverging and
        centred at zero for signed maps, see :mod:`cnnviz_core.render`),
        ``overlay`` (over the input, pixel-aligned with it, same scale) and,
        for gradient methods, ``gradient`` (the signed image-space result)."""
        scale = render.map_scale(self.maps[index])
        out = {"heatmap": render.with_colorbar(render.heatmap(self.maps[index], scale), scale)}
        if self.display is not None:
            out["overlay"] = render.overlay(self.display[index], self.maps[index], scale=scale)
        if self.images is not None:
            out["gradient"] = render.gradient_image(self.images[index])
        return out

    def _repr_png_(self) -> bytes:
        rows = []
        for i in range(len(self.maps)):
            pictures = self.renderings(i)
            rows.append([pictures.get("overlay", pictures["heatmap"]), *[v for k, v in pictures.items() if k not in ("overlay", "heatmap")]])
        return render.png_bytes(render.tile(rows))

    def _repr_html_(self) -> str:
        parts = [f"<div><b>{html.escape(self.method)}</b> on {html.escape(str(self.model.get('name')))}</div>"]
        for i in range(len(self.maps)):
            png = render.png_bytes(self.renderings(i).get("overlay", render.heatmap(self.maps[i])))
            parts.append(
                f"<figure style='display:inline-block'><img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                f"<figcaption>{html.escape(self.names[i])}: {html.escape(self.label(i))}</figcaption></figure>"
            )
        return "\n".join(parts)

    # -- saving ------------------------------------------------------------
    def item_stem(self, index: int) -> str:
        """``{input}.{method}``, then the target when it is not the default top-1."""
        return item_stem(self.names[index], self.method, self.targets[index], self.labels)

    def run_stem(self) -> str:
        return run_stem(self.method, self.names, self.targets, self.labels)

    @classmethod
    def plan(cls, folder, method: str, model: dict, params: dict, names: Sequence[str], targets: Sequence[Target],
             labels: Sequence[str] | None) -> OutputPlan:
        """What a run will write in ``folder``, for the clash check made before any work."""
        stem = run_stem(method, names, targets, labels)
        items = [f"{item_stem(n, method, t, labels)}.map.npy" for n, t in zip(names, targets)]
        identity = RunIdentity.of(method, model, params, names, [t.describe(labels) for t in targets])
        return OutputPlan(folder, f"{stem}.json", [*items, f"{stem}.maps.npy"], identity)

    def output_plan(self, folder) -> OutputPlan:
        return self.plan(folder, self.method, self.model, self.params, self.names, self.targets, self.labels)

    def save_items(self, folder: str | os.PathLike, offset: int = 0) -> list[str]:
        """Write each input's PNGs and raw map; used as batches finish."""
        written = []
        for i in range(len(self.names)):
            stem = os.path.join(folder, self.item_stem(i))
            for suffix, picture in self.renderings(i).items():
                atomic.write_bytes(f"{stem}.{suffix}.png", render.png_bytes(picture))
                written.append(f"{stem}.{suffix}.png")
            atomic.write_npy(f"{stem}.map.npy", self.maps[i])
            written.append(f"{stem}.map.npy")
        return written

    def save(self, folder: str | os.PathLike, items: bool = True, already_written: list[str] | None = None,
             overwrite: bool = False) -> list[str]:
        """Write PNG renderings, the raw arrays (.npy) and a JSON record.
        Every file is written atomically. ``items=False`` skips the per-input
        files when they were written as batches finished (listed in
        ``already_written`` so the record names them). A different run whose
        files these would replace (same method, input and target; other
        model, parameters or inputs) is refused with InputError before
        anything is written, unless ``overwrite`` (that run is then removed)."""
        plan = self.output_plan(folder).check(overwrite)
        os.makedirs(folder, exist_ok=True)
        plan.claim()
        written = list(already_written or [])
        if items:
            written += self.save_items(folder)
        arrays = {"maps": self.maps, "classes": self.classes, "scores": self.scores, **self.extras}
        if self.images is not None:
            arrays["images"] = self.images
        stem = self.run_stem()
        for key, array in arrays.items():
            path = os.path.join(folder, f"{stem}.{key}.npy")
            atomic.write_npy(path, array)
            written.append(path)
        record_path = os.path.join(folder, f"{stem}.json")
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
            "inputs": self.names,
            "targets": [t.describe(self.labels) for t in self.targets],
            "explained": [
                {"input": n, "class": int(c), "label": self.labels[int(c)] if self.labels is not None and c >= 0 else None,
                 "target": t.describe(self.labels), "score": float(s)}
                for n, c, s, t in zip(self.names, self.classes, self.scores, self.targets)
            ],
            "arrays": {"maps": list(self.maps.shape), **({"images": list(self.images.shape)} if self.images is not None else {})},
            "metadata": self.metadata,
            "files": sorted(os.path.basename(f) for f in files or []),
        }
