"""Attribution methods over a whole dataset into one store (see layout.py):
streamed per chunk with flat memory, resumable at chunk granularity, on one
or several local worker processes."""

from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

from .. import atomic
from ..dataset import Dataset
from ..errors import InputError
from . import layout
from .run_key import differences, read_record, run_key

DTYPES = ("float32", "float16")
DEFAULT_CHUNK = 128


def run_dataset(
    methods: str | Sequence[str] | dict[str, dict[str, Any]],
    model: Any,
    dataset: Any,
    *,
    out: str | os.PathLike,
    target: Any = None,
    dtype: str = "float32",
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int | None = None,
    backend: str = "local",
    devices: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    model_options: dict[str, Any] | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
):
    """Run attribution ``methods`` (names, or a dict name -> parameters) on
    every item of ``dataset`` (a folder with class subfolders, a list file, a
    glob, a list of paths or any iterable of images) and write one store in
    ``out``; returns :func:`open_results` of it. Several methods share each
    decoded batch. Rerun with the same arguments, an interrupted run continues
    with the chunks not yet finished; a store written with other weights,
    methods, parameters or data is refused unless ``overwrite=True``.

    ``devices``: ``cpu`` (default, with ``workers`` processes), ``cuda:0,cuda:1``
    or ``all``; one worker process per device. With one worker the run stays
    in this process. ``backend="ray"``: one Ray actor per CPU slot (or GPU,
    with ``devices`` other than cpu) of the cluster at ``ray_address`` (None:
    a local cluster), ``workers`` actors at most. ``threads``: compute threads
    per process (default: every core in this process, cores / workers in each
    local worker)."""
    from ..api import check_capabilities, load_model, placed
    from ..registry import get_registry
    from ..scheduler import Scheduler
    from .. import runtime_tuning
    from . import local_backend
    from .chunk_work import ChunkWorker
    from .reader import open_results

    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}: local (default) or ray")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if int(chunk_size) < 1 or (batch_size is not None and int(batch_size) < 1):
        raise InputError("chunk_size and batch_size must be at least 1")
    threads = runtime_tuning.check_threads(threads)
    chosen = {methods: {}} if isinstance(methods, str) else dict(methods) if isinstance(methods, dict) else {m: {} for m in methods}
    if not chosen:
        raise InputError("name at least one attribution method")
    registry = get_registry()
    classes = [registry.method(name) for name in chosen]
    not_attribution = [c.name for c in classes if c.kind != "attribution"]
    if not_attribution:
        raise InputError(f"a dataset run stores attribution maps; {', '.join(not_attribution)} is not an attribution method"
                         " (analyses take --dataset through `cnnviz run A [B ...] --dataset`)")
    options = dict(model_options or {})
    adapter = load_model(model, **options)
    for cls in classes:
        check_capabilities(cls, adapter)
    checked = [(cls, cls.make_params(**(chosen[cls.name] or {}))) for cls in classes]
    source = Dataset.from_spec(dataset)
    placement = local_backend.worker_devices(devices, workers) if backend == "local" else ["ray"]
    if not source.reiterable and (len(placement) > 1 or backend == "ray"):
        raise InputError("a one-shot iterator is read by one process; give a folder, list file, glob or list for several workers or Ray")
    probe = [cls(adapter, params, None) for cls, params in checked]
    batch = int(batch_size or min(m.batch_size() for m in probe))
    key = run_key(adapter, probe, target, source, dtype, int(chunk_size), batch)
    out = os.fspath(out)
    plan = {"chunk_size": int(chunk_size), "batch_size": batch, "dtype": dtype, "target": target,
            "length": source.length, "map_shape": list(adapter.config.input_size)}
    _prepare_store(out, key, plan, [c.name for c in classes], source, overwrite)
    done = layout.done_chunks(out)
    ray_placement: dict[str, Any] = {"nodes": []}  # where a Ray run's chunks ran (see ray_backend)
    if source.length is not None:
        pending = [c for c in range(-(-source.length // plan["chunk_size"])) if c not in done]
        if backend == "ray":
            if pending:
                from . import ray_backend

                setup = {"model": local_backend.model_blob(adapter if not isinstance(model, (str, os.PathLike)) else model, options),
                         "methods": checked, "source": source, "out": os.path.abspath(out), "plan": plan}
                ray_placement = ray_backend.run_chunks(pending, setup, ray_address, workers, use_gpus=(devices or "cpu") != "cpu")
        elif len(placement) == 1:
            scheduler = Scheduler(device=placement[0], progress=False, prefer=adapter.device)
            with runtime_tuning.using_threads(threads), placed(adapter, scheduler) as scheduler:
                worker = ChunkWorker(adapter, [cls(adapter, params, scheduler) for cls, params in checked], source, out, plan)
                for chunk in pending:
                    worker.run_chunk(chunk)
        elif pending:
            setup = {"model": local_backend.model_blob(adapter if not isinstance(model, (str, os.PathLike)) else model, options),
                     "methods": checked, "source": source, "out": out, "plan": plan}
            local_backend.run_chunks(pending, placement, setup, lambda chunk, counts: None, threads)
    else:
        _run_stream(adapter, checked, source, out, plan, placement[0])
    return _finish(out, [c.name for c in classes], open_results, {"backend": backend, **ray_placement})


def _run_stream(adapter, checked, source: Dataset, out: str, plan: dict, device: str) -> None:
    """A one-shot iterator: read once, in this process, one chunk of items
    decoded at a time (its methods still batch it by their batch size)."""
    from ..api import placed
    from ..scheduler import Scheduler
    from .chunk_work import ChunkWorker

    size = plan["chunk_size"]
    scheduler = Scheduler(device=device, progress=False, prefer=adapter.device)
    with placed(adapter, scheduler) as scheduler:
        worker = ChunkWorker(adapter, [cls(adapter, params, scheduler) for cls, params in checked], source, out, plan)
        written = 0  # chunks before this one are written
        for part in source.batches(adapter.config, size):  # one part per chunk of positions (its readable items)
            chunk = int(part.indices[0]) // size
            for unreadable in range(written, chunk):  # chunks where no item could be read
                worker.write_chunk(unreadable, unreadable * size, (unreadable + 1) * size, [])
            worker.write_chunk(chunk, chunk * size, _chunk_end(source, part.indices, chunk, size), [part])
            written = chunk + 1
        last = max([int(s["index"]) for s in source.skipped], default=-1)
        for chunk in range(written, last // size + 1):
            worker.write_chunk(chunk, chunk * size, _chunk_end(source, [], chunk, size), [])


def _chunk_end(source: Dataset, indices, chunk: int, size: int) -> int:
    """One past the chunk's last position, read or unreadable (a stream's
    last chunk may be short)."""
    start = chunk * size
    seen = [int(i) for i in indices] + [int(s["index"]) for s in source.skipped if start <= int(s["index"]) < start + size]
    return max(seen) + 1


def _prepare_store(out: str, key: dict, plan: dict, names: list[str], source: Dataset, overwrite: bool) -> None:
    import zarr

    record = read_record(out) if os.path.isdir(out) else None
    if record is not None and record["key"] != key:
        if not overwrite:
            raise InputError(f"{out} holds a dataset run with other settings, which cannot be resumed: "
                             + "; ".join(differences(record["key"], key)) + ". Use another --out, or --overwrite to start a new store there")
        record = None
    if record is not None and not source.reiterable and layout.done_chunks(out):
        if not overwrite:
            raise InputError(f"{out} holds a run over a one-shot iterator, which cannot be resumed; use --overwrite to start over")
        record = None
    if record is not None:
        return
    for name in (layout.RECORD, layout.INDEX, layout.MAPS, layout.INDEX_FOLDER, layout.JOURNAL_FOLDER):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    os.makedirs(out, exist_ok=True)
    group = zarr.open_group(os.path.join(out, layout.MAPS), mode="w")
    height, width = plan["map_shape"]
    for name in names:
        group.create_array(name, shape=(plan["length"] or 0, height, width), chunks=(plan["chunk_size"], height, width),
                           dtype=plan["dtype"], fill_value=float("nan"))
    # the record last: a store without it is rebuilt from scratch
    atomic.write_json(os.path.join(out, layout.RECORD), {"key": key, "plan": plan, "methods": names,
                                                         "class_names": source.class_names, "complete": False})


def _finish(out: str, names: list[str], open_results, execution: dict[str, Any]):
    chunks = sorted(layout.done_chunks(out))
    layout.merge_index(out, chunks, layout.columns(names))
    counts = {"ok": 0, "skipped": 0, "error": 0}
    for chunk in chunks:
        for row in layout.read_chunk_index(out, chunk):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    record = read_record(out)
    record.update({"complete": True, "summary": counts, "execution": execution})  # how this last session ran
    atomic.write_json(os.path.join(out, layout.RECORD), record)
    return open_results(out)
