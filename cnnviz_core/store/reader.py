"""Reading a dataset run's store back: ``cnnviz_core.open_results(OUT)``."""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from . import layout
from .run_key import read_record


class StoredResults:
    """A dataset run's store. ``index``: one row per dataset item (a pandas
    DataFrame when pandas is installed, else a list of dicts); ``maps(method)``:
    the (N, H, W) Zarr array (index it: ``maps("gradcam")[i]``, slices read
    only what they touch); ``map(method, path)``: one item's map by its path;
    ``record``: model, weights digest, methods and parameters, summary."""

    def __init__(self, out: str, record: dict[str, Any]):
        import zarr

        self.out, self.record = out, record
        self.methods: list[str] = list(record["methods"])
        self._group = zarr.open_group(os.path.join(out, layout.MAPS), mode="r")
        self._rows: list[dict[str, Any]] | None = None

    @property
    def complete(self) -> bool:
        return bool(self.record.get("complete"))

    @property
    def summary(self) -> dict[str, int]:
        return dict(self.record.get("summary") or {})

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The index as dicts (values typed: ints, floats, strings), finished chunks only."""
        if self._rows is None:
            self._rows = [_typed(row) for chunk in sorted(layout.done_chunks(self.out))
                          for row in layout.read_chunk_index(self.out, chunk)]
        return self._rows

    @property
    def index(self):
        try:
            import pandas
        except ImportError:
            return self.rows
        return pandas.DataFrame(self.rows, columns=layout.columns(self.methods))

    def maps(self, method: str):
        if method not in self.methods:
            raise InputError(f"{self.out} holds maps of {', '.join(self.methods)}, not {method!r}")
        return self._group[method]

    def map(self, method: str, path: str | os.PathLike):
        wanted = os.fspath(path)
        for row in self.rows:
            if row["path"] == wanted or os.path.abspath(row["path"]) == os.path.abspath(wanted):
                return self.maps(method)[row["index"]]
        raise InputError(f"{wanted} is not an item of the run in {self.out}")

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "unfinished"
        return f"<cnnviz dataset run {self.out}: {', '.join(self.methods)}; {len(self)} items; {state}>"


def open_results(out: str | os.PathLike) -> StoredResults:
    """Open the store a dataset run wrote in ``out`` (complete or not)."""
    out = os.fspath(out)
    record = read_record(out)
    if record is None:
        raise InputError(f"{out} holds no dataset run (no {layout.RECORD}); write one with `cnnviz run METHOD --dataset SRC --out {out}`")
    return StoredResults(out, record)


def _typed(row: dict[str, str]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("index", "label", "class") or name.endswith(".class"):
            typed[name] = int(value) if value not in ("", None) else -1
        elif name == "score" or name.endswith(".score"):
            typed[name] = float(value) if value not in ("", None) else float("nan")
        else:
            typed[name] = value or ""
    return typed
