"""Runs a method's work in batches on the chosen device: splits inputs from a
batch-size hint, on a GPU fits the batch to a measured per-item memory cost
(cnnviz_core.memory_budget), halves the batch on out-of-memory and retries
down to 1, then (under ``auto``, where the model's owner allows it) goes on
on the CPU; reports each finished batch, and shows progress on long runs."""

from __future__ import annotations

import gc
import warnings
from typing import Callable, TypeVar

from .devices import DeviceInfo, DeviceInventory
from .errors import MethodWarning, OutOfMemoryError
from .memory_budget import PROBE_ITEMS, DeviceMemory, Measurement, default_memory, fitting_batch
from .progress import Progress, progress_default

T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA OOM, onnxruntime's allocation failures and MemoryError."""
    if isinstance(error, OutOfMemoryError):
        return False  # already final
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "failed to allocate memory" in text or "bad_alloc" in text
    )


class Scheduler:
    """Device choice and batched execution with out-of-memory back-off.

    ``inventory``, ``oom_check`` and ``memory`` (a DeviceMemory measuring the
    GPU; default: torch's allocator on a real GPU) are injectable so the GPU
    logic is tested on machines without a GPU. ``prefer``: the device the
    model already is on, which ``auto`` keeps when it is a GPU.

    ``cpu_fallback``: set by whoever placed the model on the GPU (a callable
    that moves that model, a run's placement or a worker's replica, to the
    CPU). Under ``auto``, an out-of-memory error at a batch of 1 then calls it
    and the job goes on on the CPU with a MethodWarning; without it, or with
    an explicit GPU, the error is an OutOfMemoryError saying what to do.
    """

    def __init__(
        self,
        device: str | None = "auto",
        inventory: DeviceInventory | None = None,
        oom_check: Callable[[BaseException], bool] = is_out_of_memory,
        progress: bool | None = None,
        prefer: str | None = None,
        memory: DeviceMemory | None = None,
    ):
        self.inventory = inventory or DeviceInventory.detect()
        self.requested = (device or "auto").strip().lower()
        self.device: DeviceInfo = self.inventory.choose(device, prefer=prefer)
        self.oom_check = oom_check
        self.memory_probe = memory if memory is not None else default_memory(self.device.name)
        self.measurements: list[Measurement] = []  # batches chosen from measured memory, for reports and tests
        self.cpu_fallback: Callable[[], None] | None = None
        self._probing = 0  # measurements running: a nested job then runs unmeasured inside its caller's
        self.progress = progress_default(progress)  # None: off, unless $CNNVIZ_PROGRESS
        self.backoffs: list[int] = []  # batch sizes abandoned after OOM, for reports and tests
        # Nested map_batches calls (a method batching windows inside an image
        # batch) feed one progress bar: (bar, start, stop) of the outer batches.
        self._frames: list[tuple[Progress, int, int]] = []
        # A batch size that ran out of memory stays reduced for later calls of
        # the same kind (keyed by desc and requested size), so each image of a
        # run does not fail again before shrinking.
        self._learned: dict[tuple[str, int], int] = {}

    @property
    def device_name(self) -> str:
        return self.device.name

    def memory(self) -> tuple[int, int] | None:
        """(free, total) bytes of the chosen device, asked now (None for the CPU)."""
        return self.inventory.memory(self.device.name)

    @property
    def auto(self) -> bool:
        """The device was chosen by ``auto``, so another may stand in for it."""
        return self.requested == "auto"

    def on_cpu(self) -> "Scheduler":
        """The same settings on the CPU (a fallback for a model that cannot
        use the device chosen by ``auto``); this scheduler is left as it is."""
        return Scheduler("cpu", self.inventory, self.oom_check, self.progress)

    def map_batches(
        self,
        work: Callable[[int, int], T],
        total: int,
        batch_size: int,
        on_batch: Callable[[int, int, T], None] | None = None,
        desc: str = "",
    ) -> list[T]:
        """Call ``work(start, stop)`` over ``range(total)`` in batches and return
        the outputs in order. On a GPU the first items run alone and their
        measured memory sets the batch; on out-of-memory the batch is halved
        and retried; the size found is kept for later calls of the same kind."""
        if total <= 0:
            return []
        key = (desc, int(batch_size))
        requested = int(batch_size)
        batch_size = max(1, min(int(batch_size), self._learned.get(key, int(batch_size)), total))
        # a GPU job not measured yet: its first PROBE_ITEMS items run alone and are measured
        probing = (self.device.is_cuda and self.memory_probe is not None and not self._probing
                   and key not in self._learned and batch_size > PROBE_ITEMS)
        if probing:
            batch_size = PROBE_ITEMS
        outputs: list[T] = []
        outer = self._frames[-1] if self._frames else None
        progress = Progress(total, desc, enabled=self.progress and outer is None)
        start = 0
        try:
            while start < total:
                stop = min(total, start + batch_size)
                self._frames.append((progress, start, stop))
                try:
                    if probing:
                        self.memory_probe.start(self.device.name)
                        self._probing += 1
                    try:
                        output = work(start, stop)
                    finally:
                        self._probing -= int(probing)
                except Exception as error:  # noqa: BLE001 - filtered just below
                    if not self.oom_check(error):
                        raise
                    self._release_memory()
                    probing = False
                    if batch_size == 1:
                        if self._fall_back_to_cpu():
                            batch_size = min(requested, total - start)
                            continue
                        raise OutOfMemoryError(self._advice(error)) from error
                    self.backoffs.append(batch_size)
                    batch_size = max(1, batch_size // 2)
                    self._learned[key] = batch_size
                    continue
                finally:
                    self._frames.pop()
                if probing:
                    probing = False
                    batch_size = self._measured_batch(desc, key, requested, stop - start)
                outputs.append(output)
                if on_batch is not None:
                    on_batch(start, stop, output)
                progress.set(stop)
                if outer is not None:
                    bar, outer_start, outer_stop = outer
                    bar.set(outer_start + (outer_stop - outer_start) * stop / total)
                start = stop
        finally:
            progress.close()
        return outputs

    def _measured_batch(self, desc: str, key: tuple[str, int], requested: int, items: int) -> int:
        """The batch the measured first items allow; kept for later calls of the same kind."""
        device = self.device.name
        per_item = -(-self.memory_probe.peak(device) // items)
        available = self.memory_probe.available(device)
        batch = fitting_batch(per_item, available, requested)
        self.measurements.append(Measurement(desc, items, per_item, available, batch))
        self._learned[key] = batch
        return batch

    def _fall_back_to_cpu(self) -> bool:
        """Under ``auto`` on a GPU, with a model that can move: move it to the
        CPU, warn, and go on there. False where that is not allowed."""
        if not (self.device.is_cuda and self.auto and self.cpu_fallback is not None):
            return False
        gpu = self.device.name
        self.cpu_fallback()
        self.device = self.inventory.get("cpu")
        self.memory_probe = None
        self._learned.clear()  # sizes learned on the GPU say nothing about the CPU
        self._release_memory(gpu)
        warnings.warn(f"out of memory on {gpu} even with a batch of 1; the run goes on on the CPU (slower). "
                      "Free GPU memory or use a smaller input size to stay on the GPU", MethodWarning, stacklevel=4)
        return True

    def _advice(self, error: BaseException) -> str:
        where = self.device.name
        if self.device.is_cuda:
            return (f"out of memory on {where} even with a batch of 1; use --device auto (falls back to the CPU), "
                    "--device cpu, a smaller input size, or free GPU memory")
        return f"out of memory on {where} even with a batch of 1; use a smaller input size, another device (--device cpu) or free memory"

    def _release_memory(self, device: str | None = None) -> None:
        gc.collect()
        if (device or self.device.name).startswith("cuda"):
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass
