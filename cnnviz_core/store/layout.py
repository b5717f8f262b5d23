"""Where a dataset run keeps things inside its output folder, and the small
files that make it resumable.

    OUT/run.json            the run's record: model, weights digest, methods
                            and parameters, dataset, dtype, chunking; its key
    OUT/maps.zarr/METHOD    one (N, H, W) Zarr array per method, one Zarr
                            chunk per work chunk (so workers never share one)
    OUT/index/NNNNNN.csv    the index rows of one finished chunk
    OUT/journal/NNNNNN.done written (atomically) after a chunk's maps and index
                            rows: a chunk is finished exactly when it is here
    OUT/index.csv           every chunk's rows in dataset order, at the end

A chunk killed half-way has no journal entry, so a rerun computes it again and
overwrites whatever part of it had been written."""

from __future__ import annotations

import csv
import io
import os

from .. import atomic

RECORD = "run.json"
MAPS = "maps.zarr"
INDEX_FOLDER = "index"
JOURNAL_FOLDER = "journal"
INDEX = "index.csv"
BASE_COLUMNS = ["index", "path", "label", "label_name", "status", "error", "class", "class_name", "score"]


def method_columns(method: str) -> list[str]:
    return [f"{method}.class", f"{method}.class_name", f"{method}.score"]


def columns(methods: list[str]) -> list[str]:
    return BASE_COLUMNS + [c for m in methods for c in method_columns(m)]


def chunk_name(chunk: int) -> str:
    return f"{chunk:06d}"


def mark_done(out: str, chunk: int) -> None:
    atomic.write_text(os.path.join(out, JOURNAL_FOLDER, chunk_name(chunk) + ".done"), f"{chunk}\n")


def done_chunks(out: str) -> set[int]:
    folder = os.path.join(out, JOURNAL_FOLDER)
    if not os.path.isdir(folder):
        return set()
    return {int(name[:-5]) for name in os.listdir(folder) if name.endswith(".done") and name[:-5].isdigit()}


def csv_text(rows: list[dict], names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_chunk_index(out: str, chunk: int, rows: list[dict], names: list[str]) -> None:
    atomic.write_text(os.path.join(out, INDEX_FOLDER, chunk_name(chunk) + ".csv"), csv_text(rows, names))


def read_chunk_index(out: str, chunk: int) -> list[dict]:
    with open(os.path.join(out, INDEX_FOLDER, chunk_name(chunk) + ".csv"), encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def merge_index(out: str, chunks: list[int], names: list[str]) -> str:
    """index.csv from the finished chunks' rows, in dataset order, written
    atomically; memory: one chunk's rows at a time."""
    path = os.path.join(out, INDEX)
    with atomic.atomic_open(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for chunk in sorted(chunks):
            writer.writerows(read_chunk_index(out, chunk))
    return path
