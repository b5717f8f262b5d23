"""One worker's job: turn a chunk of dataset items into maps and index rows.

Each chunk is decoded once (per batch, with prefetch) and every method runs on
the same decoded batch; the chunk's maps go into its own Zarr chunk, its index
rows into their own CSV, and only then is the chunk marked done. Nothing of a
chunk is kept after it is written, so memory stays that of one chunk."""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from ..dataset import Dataset, DatasetBatch
from ..errors import CnnvizError, MethodError
from ..targets import parse_targets
from . import layout


class ChunkWorker:
    """Computes chunks of one run with one adapter (on its device) and the
    run's method instances; ``plan`` is the run's layout (see dataset_run)."""

    def __init__(self, adapter, methods, source: Dataset, out: str, plan: dict[str, Any]):
        import zarr

        self.adapter, self.methods, self.source, self.out, self.plan = adapter, methods, source, out, plan
        group = zarr.open_group(os.path.join(out, layout.MAPS), mode="r+")
        self.arrays = {m.name: group[m.name] for m in methods}
        self.columns = layout.columns([m.name for m in methods])
        for method in methods:
            method.setup()

    def run_chunk(self, chunk: int) -> dict[str, int]:
        """Compute and write one chunk of a dataset with random access."""
        size = self.plan["chunk_size"]
        start, stop = chunk * size, min((chunk + 1) * size, self.plan["length"])
        batches = self.source.batches(self.adapter.config, self.plan["batch_size"], start=start, stop=stop)
        return self.write_chunk(chunk, start, stop, batches)

    def write_chunk(self, chunk: int, start: int, stop: int, batches: Iterable[DatasetBatch]) -> dict[str, int]:
        height, width = self.plan["map_shape"]
        blocks = {m.name: np.full((stop - start, height, width), np.nan, dtype=self.plan["dtype"]) for m in self.methods}
        rows: dict[int, dict[str, Any]] = {}
        with self.adapter.session():
            for batch in batches:
                self._explain(batch, start, blocks, rows)
        for entry in [s for s in self.source.skipped if start <= int(s["index"]) < stop]:
            index = int(entry["index"])
            rows[index] = self._row(index, entry["item"], self._label_of(index), "skipped", entry["error"])
        self.source.skipped[:] = [s for s in self.source.skipped if not start <= int(s["index"]) < stop]
        for name, block in blocks.items():
            array = self.arrays[name]
            if array.shape[0] < stop:  # a stream of unknown length grows its arrays chunk by chunk (one writer)
                array.resize((stop, height, width))
            array[start:stop] = block
        ordered = [rows[i] for i in sorted(rows)]
        layout.write_chunk_index(self.out, chunk, ordered, self.columns)
        layout.mark_done(self.out, chunk)
        counts = {"ok": 0, "skipped": 0, "error": 0}
        for row in ordered:
            counts[row["status"]] += 1
        return counts

    def _explain(self, batch: DatasetBatch, start: int, blocks, rows) -> None:
        targets = parse_targets(self.plan["target"], len(batch.inputs), self.adapter.num_classes, self.adapter.labels)
        found: dict[str, Any] = {}
        try:
            for method in self.methods:
                method.check_targets(targets)
                found[method.name] = self._attribute(method, batch.inputs, targets)
        except CnnvizError as error:  # this batch failed; the run goes on and the index says why
            for position, index in enumerate(batch.indices):
                rows[int(index)] = self._row(int(index), self._item_name(int(index), batch.names[position]),
                                             int(batch.labels[position]), "error", str(error))
            return
        for name, part in found.items():
            blocks[name][batch.indices - start] = part.maps
        first = found[self.methods[0].name]
        for position, index in enumerate(batch.indices):
            row = self._row(int(index), self._item_name(int(index), batch.names[position]), int(batch.labels[position]), "ok", "")
            row.update({"class": int(first.classes[position]), "class_name": self._label(int(first.classes[position])),
                        "score": float(first.scores[position])})
            for name, part in found.items():
                row.update({f"{name}.class": int(part.classes[position]), f"{name}.class_name": self._label(int(part.classes[position])),
                            f"{name}.score": float(part.scores[position])})
            rows[int(index)] = row

    def _attribute(self, method, inputs: np.ndarray, targets):
        from ..method import Attribution

        parts = method.scheduler.map_batches(lambda a, b: method.attribute(inputs[a:b], targets[a:b]), len(inputs),
                                             method.batch_size(), desc=method.name)
        maps = np.concatenate([p.maps for p in parts])
        if maps.shape[1:] != tuple(self.plan["map_shape"]):
            raise MethodError(method.name, f"its maps are {maps.shape[1:]}, not the input size {tuple(self.plan['map_shape'])}; "
                                           "a dataset run stores maps at the input size")
        return Attribution(maps=maps, classes=np.concatenate([p.classes for p in parts]),
                           scores=np.concatenate([p.scores for p in parts]))

    def _row(self, index: int, path: str, label: int, status: str, error: str) -> dict[str, Any]:
        names = self.source.class_names
        return {"index": index, "path": path, "label": label if label >= 0 else "",
                "label_name": names[label] if names is not None and 0 <= label < len(names) else "",
                "status": status, "error": error}

    def _label(self, index: int) -> str:
        labels = self.adapter.labels
        return labels[index] if labels is not None and 0 <= index < len(labels) else ""

    def _label_of(self, index: int) -> int:
        entry = self.source.entry(index)
        return -1 if entry is None else int(entry[1])

    def _item_name(self, index: int, name: str) -> str:
        entry = self.source.entry(index)
        return os.fspath(entry[0]) if entry is not None and isinstance(entry[0], (str, os.PathLike)) else name
