"""The ``ray`` backend (optional extra ``cnnviz[ray]``): one Ray actor per GPU
(``num_gpus=1``) or per CPU slot, each with its own model replica, fed chunks
through an actor pool. Every actor writes its chunks into the same store, so
the store's folder must be reachable from every node (one machine, or a shared
filesystem). A lost worker or node is handled by Ray: the actor restarts and
the chunk's task is retried; a chunk is rewritten whole and marked done only
after it is written, so nothing is lost or duplicated."""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError

RETRIES = 3


def run_chunks(chunks: list[int], setup: dict[str, Any], address: str | None, workers: int | None, use_gpus: bool) -> list[str]:
    """Compute ``chunks`` on a Ray cluster (``address``; None: a local one
    started and stopped here); returns the ids of the nodes that worked."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise InputError("--backend ray needs Ray: pip install 'cnnviz[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU", 0)) if use_gpus else int(resources.get("CPU", 1))
        count = max(1, min(workers or slots, len(chunks)))
        actor_class = ray.remote(_actor_class(ray)).options(num_gpus=1 if use_gpus else 0, num_cpus=0 if use_gpus else 1,
                                                      max_restarts=RETRIES, max_task_retries=RETRIES)
        actors = [actor_class.remote(setup, "cuda:0" if use_gpus else "cpu") for _ in range(count)]
        pool = ActorPool(actors)
        return sorted(set(pool.map_unordered(lambda actor, chunk: actor.run.remote(chunk), chunks)))
    finally:
        if started_here:
            ray.shutdown()


def _actor_class(ray):
    """The actor class, made where Ray is known to be importable (cloudpickle
    sends it to the workers by value)."""

    class ChunkActor:
        """One replica: Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so it is cuda:0 inside."""

        def __init__(self, setup: dict[str, Any], device: str):
            from cnnviz_core.store.local_backend import build_worker

            self.worker = build_worker(setup, device, threads=1 if device == "cpu" else max(1, os.cpu_count() or 1))

        def run(self, chunk: int) -> str:
            self.worker.run_chunk(chunk)
            return ray.get_runtime_context().get_node_id()

    return ChunkActor
