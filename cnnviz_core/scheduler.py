"""Runs a method's work in batches on the chosen device: splits inputs from a
batch-size hint, halves the batch on out-of-memory and retries down to 1,
reports each finished batch, and shows progress on long runs."""

from __future__ import annotations

import gc
from typing import Callable, TypeVar

from .devices import DeviceInfo, DeviceInventory
from .errors import OutOfMemoryError
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

    ``inventory`` and ``oom_check`` are injectable so the GPU logic is tested on
    machines without a GPU. ``prefer``: the device the model already is on,
    which ``auto`` keeps when it is a GPU.
    """

    def __init__(
        self,
        device: str | None = "auto",
        inventory: DeviceInventory | None = None,
        oom_check: Callable[[BaseException], bool] = is_out_of_memory,
        progress: bool | None = None,
        prefer: str | None = None,
    ):
        self.inventory = inventory or DeviceInventory.detect()
        self.requested = (device or "auto").strip().lower()
        self.device: DeviceInfo = self.inventory.choose(device, prefer=prefer)
        self.oom_check = oom_check
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
        the outputs in order. On out-of-memory the batch is halved and retried;
        the smaller size is kept for the rest of the run."""
        if total <= 0:
            return []
        key = (desc, int(batch_size))
        batch_size = max(1, min(int(batch_size), self._learned.get(key, int(batch_size)), total))
        outputs: list[T] = []
        outer = self._frames[-1] if self._frames else None
        progress = Progress(total, desc, enabled=self.progress and outer is None)
        start = 0
        try:
            while start < total:
                stop = min(total, start + batch_size)
                self._frames.append((progress, start, stop))
                try:
                    output = work(start, stop)
                except Exception as error:  # noqa: BLE001 - filtered just below
                    if not self.oom_check(error):
                        raise
                    self._release_memory()
                    if batch_size == 1:
                        raise OutOfMemoryError(
                            f"out of memory on {self.device.name} even with a batch of 1; "
                            "use a smaller input size, another device (--device cpu) or free memory"
                        ) from error
                    self.backoffs.append(batch_size)
                    batch_size = max(1, batch_size // 2)
                    self._learned[key] = batch_size
                    continue
                finally:
                    self._frames.pop()
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

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.is_cuda:
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass
