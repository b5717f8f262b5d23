"""Batch sizes from measured memory on a GPU.

The scheduler runs the first one or two items of a batched job on their own
while a :class:`DeviceMemory` counts the peak allocation; that peak per item,
against the memory the device can still give (with a margin for what the
measurement misses: fragmentation, allocator rounding, other processes), sets
the batch for the rest of the job. Halving after an out-of-memory error stays
as the safety net.

``DeviceMemory`` is a small protocol so that the choice is tested on machines
without a GPU with figures the test gives (tests/test_scheduler.py)."""

from __future__ import annotations

import dataclasses
from typing import Protocol

PROBE_ITEMS = 2  # items of the measured first batch (it is a real batch: its output is kept)
MARGIN = 0.2  # share of the available memory left unplanned


class DeviceMemory(Protocol):
    def start(self, device: str) -> None:
        """Begin a measurement: the peak counts from what is allocated now."""

    def peak(self, device: str) -> int:
        """Bytes allocated at the peak since :meth:`start`, above what was allocated then."""

    def available(self, device: str) -> int:
        """Bytes new allocations can still get on the device now."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    desc: str
    items: int  # items in the probe batch
    per_item: int  # bytes
    available: int  # bytes
    batch: int  # the batch chosen


def fitting_batch(per_item: int, available: int, requested: int, margin: float = MARGIN) -> int:
    """The largest batch whose measured cost fits ``available`` with the
    margin, never above ``requested`` (the method's batch) nor below 1."""
    budget = int(available * (1.0 - margin))
    fits = budget // per_item if per_item > 0 else requested
    return max(1, min(int(requested), int(fits)))


class TorchCudaMemory:
    """torch's caching allocator on a CUDA device: the peak from
    ``max_memory_allocated``; what is available is the device's free memory
    (``mem_get_info``) plus what the allocator holds but does not use.
    Measuring resets torch's peak counter of the device (once per kind of job)."""

    def __init__(self):
        self._base: dict[str, int] = {}

    def start(self, device: str) -> None:
        import torch

        torch.cuda.synchronize(device)
        self._base[device] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    def peak(self, device: str) -> int:
        import torch

        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - self._base.get(device, 0))

    def available(self, device: str) -> int:
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def default_memory(device: str) -> DeviceMemory | None:
    """The measurement for a real CUDA device, else None (nothing to measure)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None  # an injected inventory names GPUs this machine does not have
    except ImportError:
        return None
    return TorchCudaMemory()
