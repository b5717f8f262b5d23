"""One streaming pass over a dataset that feeds several analyses.

Each batch is decoded once and run through the model once, capturing the union
of the layers the analyses need; every analysis folds the batch into its own
bounded state. With an output folder, the analyses' state is saved every few
seconds so an interrupted run resumes from the last saved batch instead of
starting over. The checkpoint is keyed by the methods, their parameters, the
model's weights (adapter.weights_digest()) and the dataset, and removed when
the run completes. It is an .npz read without pickle plus a JSON record
(cnnviz_core.state_codec), written atomically; one that cannot be read or
whose key differs is ignored with a warning, never executed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from typing import Any, Sequence

import numpy as np

from . import atomic, state_codec
from .analysis import AnalysisMethod
from .dataset import Dataset
from .errors import InputError, MethodWarning
from .progress import Progress
from .results_analysis import AnalysisResult

CHECKPOINT_FOLDER = ".cnnviz-resume"
CHECKPOINT_FORMAT = 1


def run_pass(
    methods: Sequence[AnalysisMethod],
    dataset: Any = None,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    checkpoint_interval: float = 10.0,
    workers: int | None = None,
    devices: str | None = None,
    chunk_size: int | None = None,
) -> list[AnalysisResult]:
    """Run analyses (all on the same adapter and scheduler) over one pass of
    ``dataset``; return their results in order.

    ``workers`` / ``devices`` (as in dataset runs: ``workers`` CPU processes,
    or ``cuda:0,cuda:1`` / ``all``, one process per GPU) split the pass over
    worker processes, each with its own model replica, fed chunks of
    ``chunk_size`` items (whole batches); their partial states are merged
    (cnnviz_core.analysis_parallel), giving the result of one process."""
    if not methods:
        raise InputError("no analysis to run")
    adapter, scheduler = methods[0].adapter, methods[0].scheduler
    streaming = [m for m in methods if m.uses_dataset]
    source = None
    if streaming:
        if dataset is None:
            raise InputError(f"{', '.join(m.name for m in streaming)} read(s) a dataset: give --dataset DIR (a folder of images, "
                             "class subfolders as labels), or dataset=... (paths or an iterable of images)")
        source = Dataset.from_spec(dataset)
    placement = _placement(scheduler, workers, devices) if streaming else []
    if len(placement) > 1:
        from .analysis_parallel import check_parallel

        check_parallel(streaming, source)  # before any work
    metadata: dict[str, Any] = {}
    with adapter.session():
        for method in methods:
            method.dataset = source
            method.setup()
        if len(placement) > 1:
            from .analysis_parallel import run_parallel

            metadata = run_parallel(streaming, source, placement, out, resume, checkpoint_interval, chunk_size)
        elif streaming:
            metadata = _stream(streaming, source, out, resume, checkpoint_interval)
        return [m.result(m.finish(), dict(metadata) if m.uses_dataset else {}) for m in methods]


def _placement(scheduler, workers: int | None, devices: str | None) -> list[str]:
    """One device per worker process; one entry: the pass stays in this process."""
    if workers is None and devices is None:
        return [scheduler.device_name]
    from .store.local_backend import worker_devices

    return worker_devices(devices or ("cpu" if scheduler.device_name == "cpu" else scheduler.device_name), workers)


def _stream(methods: Sequence[AnalysisMethod], source: Dataset, out, resume: bool, interval: float) -> dict[str, Any]:
    adapter, scheduler = methods[0].adapter, methods[0].scheduler
    layers = list(dict.fromkeys(layer for m in methods for layer in m.layers_needed()))
    for layer in layers:
        adapter.check_layer(layer)
    needs_forward = bool(layers) or any(m.needs_logits for m in methods)
    batch_size = min(m.batch_size() for m in methods)
    checkpoint, key = _checkpoint_path(methods, source, out, batch_size) if out is not None else (None, None)
    start, seen = 0, 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = _load_checkpoint(checkpoint, key, methods)
        if saved is not None:
            for method in methods:
                method.restore(saved["states"][method.name])
            start, seen, source.skipped = saved["next_index"], saved["seen"], saved["skipped"]
    resumed_from = start
    progress = Progress(source.length or 0, "+".join(m.name for m in methods), enabled=scheduler.progress and bool(source.length))
    progress.set(start)
    last_saved = time.perf_counter()
    next_index = start
    try:
        for batch in source.batches(adapter.config, batch_size, start=start):
            logits, activations = None, {}
            if needs_forward:
                logits, activations = _forward(adapter, scheduler, batch.inputs, layers)
            for method in methods:
                method.consume(batch, activations, logits)
            seen += len(batch.inputs)
            next_index = int(batch.indices[-1]) + 1
            progress.set(next_index)
            if checkpoint is not None and time.perf_counter() - last_saved >= interval:
                checkpoint = _save_checkpoint(checkpoint, key, methods, next_index, seen, source.skipped)
                last_saved = time.perf_counter()
    except BaseException:
        # keep what was done (the last batches included) so a rerun resumes here
        if checkpoint is not None and next_index > start:
            _save_checkpoint(checkpoint, key, methods, next_index, seen, source.skipped)
        raise
    finally:
        progress.close()
    if seen == 0:
        raise InputError(f"no image of the dataset ({source.description}) could be read"
                         + (f"; first error: {source.skipped[0]['error']}" if source.skipped else ""))
    if checkpoint is not None and os.path.exists(checkpoint):
        os.remove(checkpoint)
    return {"images": seen, "skipped": list(source.skipped), "resumed_from": resumed_from, "dataset": source.description,
            "class_names": source.class_names}


def _forward(adapter, scheduler, inputs: np.ndarray, layers: list[str]):
    """Logits and activations of one dataset batch; an out-of-memory error
    halves the sub-batch (the scheduler's back-off)."""
    def work(start: int, stop: int):
        if layers:
            return adapter.logits_and_activations(inputs[start:stop], layers)
        return adapter.logits(inputs[start:stop]), {}

    parts = scheduler.map_batches(work, len(inputs), len(inputs), desc="analysis-forward")
    logits = np.concatenate([p[0] for p in parts])
    activations = {name: np.concatenate([p[1][name] for p in parts]) for name in layers}
    return logits, activations


def _checkpoint_path(methods, source: Dataset, out, batch_size: int) -> tuple[str | None, str | None]:
    """(path, key) of the pass's checkpoint; (None, None) when the pass cannot
    be resumed safely (a one-shot iterator, or a model that cannot tell its
    weights apart)."""
    if not source.reiterable:
        return None, None  # a one-shot iterator cannot be replayed, so there is nothing to resume
    adapter = methods[0].adapter
    weights = adapter.weights_digest()
    if weights is None:
        return None, None  # without a digest, another model's state could be resumed
    key = json.dumps({
        "methods": [(m.name, dataclasses.asdict(m.params)) for m in methods],
        "model": {k: v for k, v in adapter.describe().items() if k not in ("device", "providers")},
        "weights": weights,
        "dataset": source.description, "length": source.length, "batch": batch_size,
    }, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = os.path.join(os.fspath(out), CHECKPOINT_FOLDER, f"{'+'.join(m.name for m in methods)}.{digest[:16]}.npz")
    return path, digest


def _load_checkpoint(path: str, key: str, methods) -> dict[str, Any] | None:
    """The saved progress, or None (with a warning) when the file cannot be
    read, was written for another run, or lacks a method's state."""
    try:
        with open(path, "rb") as stream:
            saved = state_codec.loads(stream.read())
        if saved.get("format") != CHECKPOINT_FORMAT or saved.get("key") != key:
            raise state_codec.StateError("it was written for other methods, parameters, weights or data")
        states = saved.get("states")
        if not isinstance(states, dict) or any(not isinstance(states.get(m.name), dict) for m in methods):
            raise state_codec.StateError("it lacks the state of an analysis")
        if not (isinstance(saved.get("next_index"), int) and isinstance(saved.get("seen"), int)
                and isinstance(saved.get("skipped"), list)):
            raise state_codec.StateError("its progress record is malformed")
    except (OSError, state_codec.StateError) as error:
        warnings.warn(f"ignoring the checkpoint {path}: {error}; starting the pass over", MethodWarning, stacklevel=3)
        return None
    return saved


def _save_checkpoint(path: str, key: str, methods, next_index: int, seen: int, skipped, done: list[int] | None = None) -> str | None:
    """Write the progress atomically; returns the path, or None when an
    analysis keeps state the codec cannot write (warned once, no more saves).
    ``done``: the finished chunks of a parallel pass (next_index unused)."""
    try:
        blob = state_codec.dumps({"format": CHECKPOINT_FORMAT, "key": key, "next_index": int(next_index), "seen": int(seen),
                                  "skipped": list(skipped), "states": {m.name: m.state() for m in methods},
                                  **({"done": [int(c) for c in done]} if done is not None else {})})
    except state_codec.StateError as error:
        warnings.warn(f"this pass cannot be resumed after an interruption: {error}", MethodWarning, stacklevel=3)
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_bytes(path, blob)
    return path
