"""The ``local`` backend: one worker process per selected device, each with
its own model replica, fed chunks from one work queue (a slow device simply
takes fewer). Processes start with ``spawn`` (safe with threads and CUDA).

The model reaches a worker as its spec (a registered name, timm:NAME or a
path, with its options) and is loaded there; a model given as an object (an
adapter or an ``nn.Module``) is pickled to each worker, so its class must be
importable there. The user's own model object is never moved: each worker
moves only its replica. Each worker's torch uses cores / workers threads."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from .. import runtime_tuning
from ..errors import CnnvizError, InputError

_WORKER: dict[str, Any] = {}


def worker_devices(devices: str | None, workers: int | None) -> list[str]:
    """One entry per worker: ``cpu`` (× workers), ``cuda:0,cuda:1``, or
    ``all`` (every visible GPU, else the CPU)."""
    from ..devices import DeviceInventory

    request = (devices or "cpu").strip().lower()
    if request == "all":
        chosen = [d.name for d in DeviceInventory.detect().cuda] or ["cpu"]
    else:
        chosen = [d.strip() for d in request.split(",") if d.strip()]
        inventory = DeviceInventory.detect()
        for name in chosen:
            if name != "cpu":
                inventory.get(name)  # an unknown or missing GPU: a typed error naming the devices there are
    if chosen == ["cpu"]:
        count = workers or 1
        if count < 1:
            raise InputError(f"--workers must be at least 1, got {count}")
        return ["cpu"] * count
    if workers not in (None, len(chosen)):
        raise InputError("--workers counts CPU workers; with GPUs there is one worker per device in --devices")
    return chosen


def model_blob(model: Any, options: dict[str, Any]) -> bytes:
    """What a worker needs to build its replica: the spec and options, or the
    pickled model object."""
    if isinstance(model, (str, os.PathLike)):
        return pickle.dumps(("spec", os.fspath(model), options))
    try:
        return pickle.dumps(("object", model, {}))
    except Exception as error:  # noqa: BLE001 - any pickling failure means the same to the user
        raise InputError(f"the model cannot be sent to worker processes ({type(error).__name__}: {error}); give it as a "
                         "name or file path, define its class in an importable module, or run with workers=1") from None


def run_chunks(chunks: list[int], devices: list[str], setup: dict[str, Any], on_done: Callable[[int, dict], None],
               threads: int | None = None) -> None:
    """Compute ``chunks`` on one process per entry of ``devices``, each with
    ``threads`` compute threads (default: as set here, else cores / workers)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    threads = threads or runtime_tuning.threads() or runtime_tuning.thread_share(len(devices))
    with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_start_worker,
                             initargs=(queue, setup, threads)) as pool:
        futures = {pool.submit(_run_chunk, chunk): chunk for chunk in chunks}
        try:
            for future in as_completed(futures):
                on_done(futures[future], future.result())
        except BrokenProcessPool as error:  # a worker was killed (out of memory, kill -9): its chunk is not marked done
            for future in futures:
                future.cancel()
            raise CnnvizError(f"a worker process died ({error}); run the same command again to continue from the "
                              "finished chunks") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _start_worker(queue, setup: dict[str, Any], threads: int) -> None:
    _WORKER["worker"] = build_worker(setup, queue.get(), threads)


def build_worker(setup: dict[str, Any], device: str, threads: int):
    """A ChunkWorker in this process with its own model replica on ``device``
    (shared by the local and the Ray backend)."""
    from ..api import load_model
    from ..scheduler import Scheduler
    from .chunk_work import ChunkWorker

    runtime_tuning.start_worker(threads)  # allocator and thread share before the model loads
    kind, model, options = pickle.loads(setup["model"])
    adapter = load_model(model, **options)
    adapter.to(device)  # this process's replica only
    scheduler = Scheduler(device=device, progress=False)
    methods = [cls(adapter, params, scheduler) for cls, params in setup["methods"]]
    return ChunkWorker(adapter, methods, setup["source"], setup["out"], setup["plan"])


def _run_chunk(chunk: int) -> dict[str, int]:
    return {**_WORKER["worker"].run_chunk(chunk), "threads": runtime_tuning.report()}  # the worker's settings, for the record
