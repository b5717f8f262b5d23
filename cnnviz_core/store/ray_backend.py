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

from ..errors import CnnvizError, InputError

RETRIES = 3


def run_chunks(chunks: list[int], setup: dict[str, Any], address: str | None, workers: int | None, use_gpus: bool) -> dict[str, Any]:
    """Compute ``chunks`` on a Ray cluster (``address``; None: a local one
    started and stopped here). Returns where they ran, for the run's record:
    ``nodes`` (the ids of the nodes that worked) and ``workers`` (chunk ->
    [position in nodes, PID of the worker process that wrote it])."""
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
        # the setup goes into the object store once, held here for the whole run: an actor restarted after its
        # worker died is built again from it (Ray frees arguments it stored itself; ray-project/ray#53727)
        setup_ref = ray.put(setup)
        actors = [actor_class.remote(setup_ref, "cuda:0" if use_gpus else "cpu") for _ in range(count)]
        pool = ActorPool(actors)
        try:
            placed = dict(pool.map_unordered(lambda actor, chunk: actor.run.remote(chunk), chunks))
        except ray.exceptions.RayTaskError:
            raise  # the method's own error (Ray re-raises it as an instance of its class too)
        except ray.exceptions.RayError as error:  # workers lost more often than Ray retries
            raise CnnvizError(f"Ray workers were lost beyond {RETRIES} retries ({type(error).__name__}: {_first_line(error)}); the finished "
                              "chunks are kept: run the same command again to continue") from None
    finally:
        if started_here:
            ray.shutdown()
    nodes = sorted({node for node, _ in placed.values()})
    return {"nodes": nodes, "workers": {str(c): [nodes.index(placed[c][0]), placed[c][1]] for c in sorted(placed)}}


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else "no detail")[:300]


def _actor_class(ray):
    """The actor class, made where Ray is known to be importable (cloudpickle
    sends it to the workers by value)."""

    class ChunkActor:
        """One replica: Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so it is cuda:0 inside."""

        def __init__(self, setup: dict[str, Any], device: str):
            from cnnviz_core.store.local_backend import build_worker

            self.worker = build_worker(setup, device, threads=1 if device == "cpu" else max(1, os.cpu_count() or 1))

        def run(self, chunk: int) -> tuple[int, tuple[str, int]]:
            self.worker.run_chunk(chunk)
            return chunk, (ray.get_runtime_context().get_node_id(), os.getpid())

    return ChunkActor
