"""Dataset analyses on several worker processes (data-parallel).

The dataset is cut into chunks of whole batches; a work queue hands chunks to
one worker process per device (a slow device takes fewer), each with its own
model replica and its own instances of the analyses. A worker starts every
chunk from the analyses' empty state and sends back the chunk's partial state
(encoded with :mod:`cnnviz_core.state_codec`, never pickled state); this
process merges it into its own instances (``AnalysisMethod.merge``), in
whatever order chunks finish; merges are order-free, so the result is the one
pass over all items gives. Finished chunks are checkpointed with the merged
state, so an interrupted run resumes without recomputing them."""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

from . import runtime_tuning, state_codec
from .analysis import AnalysisMethod
from .dataset import Dataset
from .errors import CnnvizError, InputError
from .progress import Progress

BATCHES_PER_CHUNK = 4  # a chunk: the unit handed to a worker and of resuming
_WORKER: dict[str, Any] = {}


def can_merge(method: AnalysisMethod) -> bool:
    return type(method).merge is not AnalysisMethod.merge


def check_parallel(methods: Sequence[AnalysisMethod], source: Dataset) -> None:
    """Refuse, before any work, what cannot run on several workers."""
    single = [m.name for m in methods if not can_merge(m)]
    if single:
        raise InputError(f"{', '.join(single)} cannot combine partial states from workers; run it with workers=1 (no --workers)")
    if not source.reiterable or source.length is None:
        raise InputError("a one-shot iterator is read by one process; give a folder, list file, glob or list for several workers")


def run_parallel(methods: Sequence[AnalysisMethod], source: Dataset, devices: list[str], out, resume: bool,
                 interval: float, chunk_size: int | None = None) -> dict[str, Any]:
    """Stream ``source`` through ``methods`` (already set up here) on one
    worker per entry of ``devices``; returns the pass's metadata."""
    from .analysis_pass import _checkpoint_path, _load_checkpoint, _save_checkpoint
    from .store.local_backend import model_blob

    check_parallel(methods, source)
    adapter, scheduler = methods[0].adapter, methods[0].scheduler
    batch_size = min(m.batch_size() for m in methods)
    # whole batches per chunk: every item sees the batch composition one worker would give it
    size = batch_size * max(1, -(-(chunk_size or batch_size * BATCHES_PER_CHUNK) // batch_size))
    chunks = list(range(-(-source.length // size)))
    checkpoint, key = _checkpoint_path(methods, source, out, batch_size) if out is not None else (None, None)
    if checkpoint is not None:
        checkpoint, key = f"{checkpoint[:-len('.npz')]}.chunks{size}.npz", f"{key}:chunks{size}"
    done: set[int] = set()
    seen, skipped = 0, []
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = _load_checkpoint(checkpoint, key, methods)
        if saved is not None and isinstance(saved.get("done"), list):
            for method in methods:
                method.restore(saved["states"][method.name])
            done, seen, skipped = {int(c) for c in saved["done"]}, saved["seen"], list(saved["skipped"])
    resumed_from = len(done)
    pending = [c for c in chunks if c not in done]
    setup = {"model": model_blob(adapter, {}), "methods": [(type(m), m.params) for m in methods], "source": source,
             "batch_size": batch_size, "size": size}
    progress = Progress(source.length, "+".join(m.name for m in methods), enabled=scheduler.progress)
    progress.set(min(source.length, len(done) * size))
    last_saved = time.perf_counter()
    consistent = True  # False while a chunk is half merged: such a state is never saved

    def save():
        return _save_checkpoint(checkpoint, key, methods, -1, seen, skipped, done=sorted(done))

    try:
        with contextlib.closing(_results(pending, devices, setup)) as results:
            for chunk, result in results:
                states = state_codec.loads(result["state"])
                consistent = False
                for method in methods:
                    method.merge(states[method.name])
                seen += result["seen"]
                skipped += result["skipped"]
                done.add(chunk)
                consistent = True
                progress.set(min(source.length, len(done) * size))
                if checkpoint is not None and time.perf_counter() - last_saved >= interval:
                    checkpoint = save()
                    last_saved = time.perf_counter()
    except BaseException:
        if checkpoint is not None and consistent and len(done) > resumed_from:
            save()  # merged chunks are kept, so a rerun computes only the others
        raise
    finally:
        progress.close()
    skipped.sort(key=lambda entry: int(entry["index"]))
    if seen == 0:
        raise InputError(f"no image of the dataset ({source.description}) could be read"
                         + (f"; first error: {skipped[0]['error']}" if skipped else ""))
    if checkpoint is not None and os.path.exists(checkpoint):
        os.remove(checkpoint)
    source.skipped[:] = skipped
    return {"images": seen, "skipped": skipped, "resumed_from": resumed_from * size if resumed_from else 0,
            "dataset": source.description, "class_names": source.class_names, "workers": list(devices), "chunk_size": size}


def _results(chunks: list[int], devices: list[str], setup: dict[str, Any]):
    """(chunk, result) as workers finish them."""
    import multiprocessing

    if not chunks:
        return
    context = multiprocessing.get_context("spawn")  # safe with threads and CUDA
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    threads = runtime_tuning.threads() or runtime_tuning.thread_share(len(devices))  # --threads, else cores / workers
    with ProcessPoolExecutor(min(len(devices), len(chunks)), mp_context=context, initializer=_start_worker,
                             initargs=(queue, setup, threads)) as pool:
        futures = {pool.submit(_run_chunk, chunk): chunk for chunk in chunks}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BrokenProcessPool as error:  # a worker was killed (out of memory, kill -9)
            raise CnnvizError(f"a worker process died ({error}); run the same command again with --out to continue "
                              "from the merged chunks") from None
        finally:
            for future in futures:
                future.cancel()


class ChunkAnalyses:
    """One worker: a model replica on ``device`` and the analyses, set up
    once; every chunk starts from their empty state."""

    def __init__(self, setup: dict[str, Any], device: str, threads: int):
        import pickle

        from .api import load_model
        from .scheduler import Scheduler

        runtime_tuning.start_worker(threads)  # allocator and thread share before the model loads
        _, model, options = pickle.loads(setup["model"])
        self.adapter = load_model(model, **options)
        self.adapter.to(device)  # this process's replica only
        self.scheduler = Scheduler(device=device, progress=False)
        self.source: Dataset = setup["source"]
        self.batch_size, self.size = setup["batch_size"], setup["size"]
        self.methods = [cls(self.adapter, params, self.scheduler) for cls, params in setup["methods"]]
        for method in self.methods:
            method.dataset = self.source
            method.setup()
        self.layers = list(dict.fromkeys(layer for m in self.methods for layer in m.layers_needed()))
        self.needs_forward = bool(self.layers) or any(m.needs_logits for m in self.methods)
        self.empty = state_codec.dumps({m.name: m.state() for m in self.methods})  # a deep copy, decoded afresh per chunk

    def run(self, chunk: int) -> dict[str, Any]:
        from .analysis_pass import _forward

        empty = state_codec.loads(self.empty)
        for method in self.methods:
            method.restore(empty[method.name])
        before, seen = len(self.source.skipped), 0
        start, stop = chunk * self.size, min((chunk + 1) * self.size, self.source.length)
        with self.adapter.session():
            for batch in self.source.batches(self.adapter.config, self.batch_size, start=start, stop=stop):
                logits, activations = None, {}
                if self.needs_forward:
                    logits, activations = _forward(self.adapter, self.scheduler, batch.inputs, self.layers)
                for method in self.methods:
                    method.consume(batch, activations, logits)
                seen += len(batch.inputs)
        return {"state": state_codec.dumps({m.name: m.state() for m in self.methods}), "seen": seen,
                "skipped": self.source.skipped[before:]}


def _start_worker(queue, setup: dict[str, Any], threads: int) -> None:
    _WORKER["worker"] = ChunkAnalyses(setup, queue.get(), threads)


def _run_chunk(chunk: int) -> dict[str, Any]:
    return _WORKER["worker"].run(chunk)
