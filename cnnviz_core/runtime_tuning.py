"""Process settings that keep speed steady on a shared machine (issue 15):
the memory allocator and the number of compute threads.

- Allocator: glibc returns large freed blocks (eager torch's activation
  buffers) to the system and faults them in again on the next forward pass.
  :func:`tune_allocator` raises its mmap and trim thresholds with ``mallopt``
  so freed buffers stay in the heap for the next batch: measured on the
  Grad-CAM batch loop (benchmarks/README.md). A no-op off glibc.
- Threads: one intra-op thread per core, torch's and onnxruntime's default,
  makes threads spin against each other once several processes share the
  cores. :func:`set_threads` sets torch's count and the count given to
  onnxruntime sessions created afterwards (:func:`threads`); each worker of a
  dataset run takes :func:`thread_share` of the cores. ``cnnviz run
  --threads N`` and ``run(..., threads=N)`` set it by hand.

Importing this module imports no torch."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Iterator

from .errors import InputError

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 32 MiB (glibc's ceiling for the mmap threshold on 64-bit) come
# from the heap and are reused; the heap's top is only trimmed past 1 GiB free.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30

_threads: int | None = None  # set by set_threads; None: each runtime's default
_allocator_tuned: bool | None = None  # None: not tried yet


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_share(workers: int) -> int:
    """Threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, available_cores() // max(1, int(workers)))


def check_threads(value) -> int | None:
    """``value`` as a thread count (None stays None); a typed error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() or int(value) < 1:
        raise InputError(f"threads must be a whole number of at least 1 (the cores here: {available_cores()}), got {value!r}")
    return int(value)


def threads() -> int | None:
    """The thread count set for this process, or None (runtimes' defaults).
    onnxruntime sessions take it as ``intra_op_num_threads`` (0: its default)."""
    return _threads


def set_threads(count) -> int | None:
    """Use ``count`` intra-op threads in torch and in onnxruntime sessions
    created from now on. torch is set now if it is loaded, else through
    ``OMP_NUM_THREADS``, which it reads when it loads. Returns the previous
    setting (for :func:`using_threads`)."""
    global _threads
    count = check_threads(count)
    previous = _threads
    if count is None:
        return previous
    _threads = count
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(count)
    else:
        os.environ["OMP_NUM_THREADS"] = str(count)
    return previous


@contextlib.contextmanager
def using_threads(count) -> Iterator[None]:
    """``count`` threads (see :func:`set_threads`) for the block; None: unchanged."""
    global _threads
    count = check_threads(count)
    if count is None:
        yield
        return
    import torch

    before_torch, before = torch.get_num_threads(), _threads
    set_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        _threads = before


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process). True when
    applied; False off glibc or when mallopt refuses. ``CNNVIZ_MALLOC=default``
    leaves the allocator alone (to compare)."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("CNNVIZ_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the environment's MALLOC_*_ variables, when set, are the user's choice
    applied = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _allocator_tuned = bool(applied)
    return _allocator_tuned


def report() -> dict:
    """This process's settings: the thread count set, torch's (when loaded), the allocator's tuning."""
    torch = sys.modules.get("torch")
    return {"set": _threads, "torch": torch.get_num_threads() if hasattr(torch, "get_num_threads") else None,
            "allocator_tuned": bool(_allocator_tuned)}


def start_worker(threads_each: int) -> None:
    """What every worker process does first: the allocator, then its share of threads."""
    tune_allocator()
    set_threads(threads_each)
