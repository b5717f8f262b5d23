"""The result of a synthesis method: images in [0, 1] plus the history of the
objective, rendered and saved like every other result."""

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
    saved_to: str | None = dataclasses.field(default=None, compare=False)  # the record's path, once saved

    kind = "synthesis"

    def label(self, index: int) -> str:
        if self.classes is None:
            return self.targets[index].describe(self.labels)
        cls = int(self.classes[index])
        name = f" {self.labels[cls]}" if self.labels is not None and 0 <= cls < len(self.labels) else ""
        probability = f" (p={float(self.scores[index]):.3f})" if self.scores is not None else ""
        return f"{cls}{name}{probability}"

    # -- in words ----------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """One line per item: what it was made for and what it reached — the
        classes and confidences before and after with the perturbation's
        norms (attacks), the class and confidence reached, or the
        objective from start to end."""
        return [self._summary(i) for i in range(len(self.names))]

    def _summary(self, index: int) -> str:
        record = self.records[index] if index < len(self.records) else {}
        facts = []
        if "class_before" in record and "class_after" in record:
            before, after = (f"{record[f'class_{w}']} {record.get(f'label_{w}') or ''} (p={float(record[f'confidence_{w}']):.3f})"
                             for w in ("before", "after"))
            facts.append(f"{before} -> {after}".replace("  ", " "))
            if "success" in record:
                facts.append("goal reached" if record["success"] else "goal not reached")
            if "l2" in record and "linf" in record:
                facts.append(f"L2 {result_text.number(record['l2'])}, Linf {result_text.number(record['linf'])}")
        else:
            if self.classes is not None:
                facts.append(f"top-1 {self.label(index)}")
            if "confidence" in record:
                facts.append(f"target confidence {float(record['confidence']):.3f}")
            ends = result_text.start_end(record, self.history, index)
            if ends is not None:
                direction = "higher" if self.higher_is_better else "lower"
                facts.append(f"objective {result_text.number(ends[0])} -> {result_text.number(ends[1])} ({direction} is better)")
        return f"{self.names[index]}, target {self.targets[index].describe(self.labels)}: " + "; ".join(facts)

    def __repr__(self) -> str:
        title = f"{self.method} on {result_text.model_name(self.model)}, {len(self.names)} item(s)"
        arrays = f"images {result_text.shape(self.images)}; history {result_text.brief(list(self.history))}"
        if self.pictures:
            arrays += f"; pictures {result_text.brief(list(self.pictures))}"
        return result_text.compose(type(self).__name__, title, [arrays], self.summary_lines(), self.saved_to)

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
    def item_stem(self, index: int) -> str:
        """``{name}.{method}``, then the target when it is not the default
        (and the name does not already say it)."""
        return item_stem(self.names[index], self.method, self.targets[index], self.labels)

    def run_stem(self) -> str:
        return run_stem(self.method, self.names, self.targets, self.labels)

    @classmethod
    def plan(cls, folder, method: str, model: dict, params: dict, names: Sequence[str], targets: Sequence[Target],
             labels: Sequence[str] | None) -> OutputPlan:
        """What a run will write in ``folder``, for the clash check made before any work."""
        stem = run_stem(method, names, targets, labels)
        items = [f"{item_stem(n, method, t, labels)}.png" for n, t in zip(names, targets)]
        identity = RunIdentity.of(method, model, params, names, [t.describe(labels) for t in targets])
        return OutputPlan(folder, f"{stem}.json", [*items, f"{stem}.images.npy"], identity)

    def output_plan(self, folder) -> OutputPlan:
        return self.plan(folder, self.method, self.model, self.params, self.names, self.targets, self.labels)

    def save(self, folder: str | os.PathLike, overwrite: bool = False, already_written: list[str] | None = None) -> list[str]:
        """Per item ``{stem}.png`` (and ``.{picture}.png``); the raw arrays as
        ``{run stem}.{array}.npy``; the history chart and a JSON record. Every
        file is written atomically. A different run whose files these would
        replace is refused with InputError before anything is written,
        unless ``overwrite``. ``already_written``: files the run wrote itself
        (the best image so far), for the record."""
        plan = self.output_plan(folder).check(overwrite)
        os.makedirs(folder, exist_ok=True)
        plan.claim()
        written = list(already_written or [])
        for i in range(len(self.names)):
            stem = self.item_stem(i)
            for key, picture in self.renderings(i).items():
                suffix = "" if key == "image" else f".{key}"
                path = os.path.join(folder, f"{stem}{suffix}.png")
                atomic.write_bytes(path, render.png_bytes(picture))
                written.append(path)
        arrays: dict[str, np.ndarray] = {"images": self.images, **{f"history.{k}": v for k, v in self.history.items()},
                                         **{f"pictures.{k}": v for k, v in self.pictures.items()}, **self.extras}
        if self.classes is not None:
            arrays["classes"] = self.classes
        if self.scores is not None:
            arrays["scores"] = self.scores
        stem = self.run_stem()
        for key, array in arrays.items():
            path = os.path.join(folder, f"{stem}.{key}.npy")
            atomic.write_npy(path, array)
            written.append(path)
        if any(v.shape[-1] > 1 for v in self.history.values()):
            path = os.path.join(folder, f"{stem}.history.png")
            atomic.write_bytes(path, render.png_bytes(self.history_plot()))
            written.append(path)
        record_path = os.path.join(folder, f"{stem}.json")
        atomic.write_json(record_path, self.record(written))
        plan.finish(written + [record_path])
        self.saved_to = record_path
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
