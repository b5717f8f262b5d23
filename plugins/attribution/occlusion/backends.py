"""Where occlusion's forward passes run. Every runner answers the same call,
``occluded_logits(image, boxes, fill)``: the logits of the image with each box
set to the fill, one row per box.

- :class:`BatchedOcclusion` builds the occluded copies in one preallocated
  buffer (window pixels written with one vectorized index-put; only the
  previous windows are restored between batches) and runs full forward passes
  on one of the adapter's forward runners (:func:`batched_runner`): eager torch
  under ``inference_mode`` with a channels-last buffer, an onnxruntime session
  (contiguous buffer), or any adapter's ``logits``.
- :class:`IncrementalRunner` hands the boxes to an ``IncrementalOcclusion``
  (Krypton-style incremental inference, ``occlusion_incremental.py``).
- :func:`probe_runners` times a few rounds of real batches on each candidate
  and returns the fastest by median; the decision is remembered by key for
  the process (and on disk, by ``decision_cache``).
- Each runner reports every batch's windows and seconds to ``on_batch``
  when set: the run's speed is checked against the remembered figure.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch


class OccludedBatch:
    """A reusable (capacity, 3, H, W) buffer holding copies of one image with
    one window each set to the fill. Between calls on the same image only the
    windows written last time are restored, so a batch costs the window pixels,
    not a fresh copy of the image per slot."""

    def __init__(self, capacity: int, shape: tuple[int, int, int], device, channels_last: bool):
        import torch

        self.channels_last = channels_last
        self.device = torch.device(device)
        self._allocate(capacity, shape)

    def _allocate(self, capacity: int, shape) -> None:
        import torch

        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.buffer = torch.empty((capacity, *shape), device=self.device, memory_format=memory_format)
        self._nhwc = self.buffer.permute(0, 2, 3, 1)  # a view: index-puts write into the buffer
        self._image: torch.Tensor | None = None  # the caller's image and fill, compared by identity
        self._fill: torch.Tensor | None = None
        self._dirty = np.zeros((capacity, 4), dtype=np.int64)  # the box each slot holds
        self._is_dirty = np.zeros(capacity, dtype=bool)

    def _put(self, slots: np.ndarray, boxes: np.ndarray, source: torch.Tensor) -> None:
        """Copy ``source`` (3, H, W) into each slot inside its box: one
        vectorized index-put when the boxes share a size, else one slice each."""
        import torch

        if not len(slots):
            return
        heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
        if (heights == heights[0]).all() and (widths == widths[0]).all():
            height, width = int(heights[0]), int(widths[0])
            on = {"device": self.device, "dtype": torch.long}
            index_slots = torch.as_tensor(slots, **on).view(-1, 1, 1)
            rows = (torch.as_tensor(boxes[:, 0:1], **on) + torch.arange(height, **on)).view(-1, height, 1)
            cols = (torch.as_tensor(boxes[:, 2:3], **on) + torch.arange(width, **on)).view(-1, 1, width)
            self._nhwc[index_slots, rows, cols] = source.permute(1, 2, 0)[rows, cols]
        else:
            for slot, (y0, y1, x0, x1) in zip(slots, boxes):
                self.buffer[slot, :, y0:y1, x0:x1] = source[:, y0:y1, x0:x1]

    def fill(self, image: torch.Tensor, boxes: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
        """The first len(boxes) slots, each the image with its box set to the fill."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        count = len(boxes)
        if count > self.buffer.shape[0] or tuple(self.buffer.shape[1:]) != tuple(image.shape):
            self._allocate(max(count, self.buffer.shape[0]), tuple(image.shape))
        if self._image is not image or self._fill is not fill:  # a new image: copy it into every slot once
            self._image, self._fill = image, fill
            # on this buffer's device (an onnxruntime buffer on the CPU for a model on a GPU)
            self._local = (image.to(self.device), fill.to(self.device))
            self.buffer.copy_(self._local[0].expand_as(self.buffer))
            self._is_dirty[:] = False
        else:  # the same image: undo only the windows written before
            stale = np.flatnonzero(self._is_dirty[:count])
            self._put(stale, self._dirty[stale], self._local[0])
        self._put(np.arange(count), boxes, self._local[1])
        self._dirty[:count], self._is_dirty[:count] = boxes, True
        return self.buffer[:count]


class BatchedOcclusion:
    """Full forward passes over occluded copies built in an :class:`OccludedBatch`."""

    def __init__(self, name: str, forward: Callable[[torch.Tensor], np.ndarray], device="cpu", channels_last: bool = False,
                 capacity: int = 16, shape: tuple[int, int, int] = (3, 1, 1)):
        import torch

        self.name = name
        self._forward = forward
        self._batch = OccludedBatch(capacity, shape, device, channels_last)
        self.device = torch.device(device)
        self.batch_size = capacity  # occluded copies per forward pass
        self.on_batch: Callable[[int, float], None] | None = None  # (windows, seconds) of each batch, when watched

    def clean_logits(self, images: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            layout = torch.channels_last if self._batch.channels_last else torch.contiguous_format
            return self._forward(images.to(self.device).contiguous(memory_format=layout))

    def occluded_logits(self, image: torch.Tensor, boxes, fill: torch.Tensor) -> np.ndarray:
        import torch

        began = time.perf_counter()
        with torch.inference_mode():
            logits = self._forward(self._batch.fill(image, boxes, fill))
        report(self.on_batch, len(logits), began)
        return logits

    def describe(self) -> dict:
        return {"backend": self.name, "layout": "channels_last" if self._batch.channels_last else "contiguous",
                "batch_size": self.batch_size}


def report(on_batch: Callable[[int, float], None] | None, windows: int, began: float) -> None:
    if on_batch is not None and windows:
        on_batch(windows, time.perf_counter() - began)


def batched_runner(runner, shape, capacity: int) -> BatchedOcclusion:
    """Full forward passes on one of the adapter's forward runners
    (``ForwardRunner``): the occluded copies are built where and as it takes
    them — a torch tensor on its device in its layout (eager torch: channels
    last, the faster NHWC convolutions on CPUs), or a contiguous CPU buffer
    handed over as numpy without a copy (onnxruntime, any adapter's logits)."""
    if runner.takes == "torch":
        return BatchedOcclusion(runner.name, runner.forward, runner.device, channels_last=runner.channels_last,
                                capacity=capacity, shape=shape)

    def forward(batch: torch.Tensor) -> np.ndarray:
        return np.asarray(runner.forward(batch.cpu().numpy()), dtype=np.float32)

    return BatchedOcclusion(runner.name, forward, "cpu", channels_last=False, capacity=capacity, shape=shape)


class IncrementalRunner:
    """Occluded logits from an ``IncrementalOcclusion``; clean logits from the
    full torch runner (incremental inference reuses a clean pass internally)."""

    name = "incremental"

    def __init__(self, incremental, full: BatchedOcclusion, device, batch_size: int):
        import torch

        self.incremental = incremental
        self.full = full
        self.device = torch.device(device)
        self.batch_size = batch_size  # windows per call
        self.on_batch: Callable[[int, float], None] | None = None

    def clean_logits(self, images: torch.Tensor) -> np.ndarray:
        return self.full.clean_logits(images)

    def occluded_logits(self, image: torch.Tensor, boxes, fill: torch.Tensor) -> np.ndarray:
        import torch

        began = time.perf_counter()
        box_list = [tuple(int(v) for v in box) for box in np.asarray(boxes, dtype=np.int64).reshape(-1, 4)]
        with torch.inference_mode():
            logits = self.incremental.occluded_logits(image, box_list, fill, batch_size=self.batch_size)
        rows = torch.as_tensor(logits).float().cpu().numpy()
        report(self.on_batch, len(rows), began)
        return rows

    def describe(self) -> dict:
        return {"backend": "incremental", "layout": "channels_last", "batch_size": self.batch_size}


# -- choosing the fastest runner ---------------------------------------------
# Rounds of one batch per candidate, taking turns. Each candidate's figure is
# the median of its rounds (one round slowed by a burst of load elsewhere, or
# by first-call costs, does not decide); with only two rounds, the faster.
PROBE_ROUNDS = 3
MIN_PROBE_ROUNDS = 2


@dataclasses.dataclass
class Decision:
    chosen: str
    probe_ms_per_window: dict[str, float]  # each candidate's median (or faster of two) probe batch
    how: str  # "probe", "remembered" (an earlier probe in this process), "remembered on disk" (an earlier process),
    # "forced", "only option", "job too small to probe"

    def describe(self) -> dict:
        return {"chosen": self.chosen, "how": self.how,
                "probe_ms_per_window": {k: round(v, 3) for k, v in self.probe_ms_per_window.items()}}


_decisions: dict[tuple, Decision] = {}
_batch_sizes: dict[tuple, int] = {}  # tuned batch size per decision key and runner
_decisions_lock = threading.Lock()


def remembered(key: tuple) -> Decision | None:
    with _decisions_lock:
        decision = _decisions.get(key)
    return None if decision is None else dataclasses.replace(decision, how="remembered")


def remember(key: tuple, decision: Decision) -> None:
    with _decisions_lock:
        _decisions[key] = decision


def forget(key: tuple) -> None:
    """Drop one remembered decision and its batch sizes."""
    with _decisions_lock:
        _decisions.pop(key, None)
        for stale in [entry for entry in _batch_sizes if entry[0] == key]:
            del _batch_sizes[stale]


def forget_decisions() -> None:
    """Drop every remembered runtime decision and batch size (the next run probes again)."""
    with _decisions_lock:
        _decisions.clear()
        _batch_sizes.clear()


def remembered_batch(key: tuple) -> int | None:
    with _decisions_lock:
        return _batch_sizes.get(key)


def remember_batch(key: tuple, size: int) -> None:
    with _decisions_lock:
        _batch_sizes[key] = size


def probe_rounds(windows: int, batch_sizes) -> int:
    """Rounds a job of ``windows`` affords (up to ``PROBE_ROUNDS``): below
    ``MIN_PROBE_ROUNDS`` it is too small to probe."""
    return min(PROBE_ROUNDS, windows // max(1, sum(batch_sizes)))


def probe_size(batch_sizes) -> int:
    """Windows the smallest probe consumes: ``MIN_PROBE_ROUNDS`` full batches per candidate."""
    return MIN_PROBE_ROUNDS * sum(batch_sizes)


def summarize(times: list[float]) -> float:
    """A candidate's figure from its rounds: the median of three or more, the faster of two."""
    return float(np.median(times)) if len(times) >= 3 else min(times)


def probe_runners(runners: dict, image: torch.Tensor, boxes: np.ndarray, fill: torch.Tensor,
                  on_failure: Callable[[str, BaseException], None], rounds: int | None = None
                  ) -> tuple[Decision, dict[int, np.ndarray]]:
    """Run ``rounds`` rounds (default: as many as ``boxes`` affords, up to
    ``PROBE_ROUNDS``) of one real batch of ``boxes`` per runner (each its own
    batch size), the runners taking turns so that a burst of load elsewhere
    meets them alike, and pick the fastest per window by each runner's
    summarized rounds (:func:`summarize`). Returns the decision and the logits computed
    on the way, by index into ``boxes``: nothing is wasted. A runner that
    raises is reported to ``on_failure`` and dropped."""
    if rounds is None:
        rounds = max(1, probe_rounds(len(boxes), [runner.batch_size for runner in runners.values()]))
    times: dict[str, list[float]] = {}
    logits: dict[int, np.ndarray] = {}
    live = dict(runners)
    start = 0
    for _ in range(rounds):
        for name, runner in list(live.items()):
            chunk = boxes[start : start + runner.batch_size]
            if not len(chunk):
                break
            try:
                began = time.perf_counter()
                rows = runner.occluded_logits(image, chunk, fill)
                elapsed = time.perf_counter() - began
            except Exception as error:  # noqa: BLE001 - a runtime failing at run time is dropped, not fatal
                on_failure(name, error)
                live.pop(name)
                times.pop(name, None)
                continue
            for offset, row in enumerate(rows):
                logits[start + offset] = row
            start += len(chunk)
            times.setdefault(name, []).append(1000 * elapsed / max(1, len(chunk)))
    if not times:
        raise RuntimeError("every occlusion runtime failed during the probe")
    timings = {name: summarize(values) for name, values in times.items()}
    chosen = min(timings, key=timings.get)
    return Decision(chosen, timings, "probe"), logits


# -- the batch size -----------------------------------------------------------------
BATCH_LADDER = {"cpu": (4, 8, 16, 32, 64), "cuda": (16, 32, 64, 128, 256)}
TUNE_GAIN = 0.95  # a batch size is taken only when at least 5% faster per window
TUNE_BATCHES = 3  # batches timed at each size: their median counts (the first at a new size pays its planning)


@dataclasses.dataclass
class Tuning:
    batch_size: int
    ms_per_window: dict[int, float]  # median of TUNE_BATCHES batches at each size tried
    complete: bool  # False: the windows ran out before a size was settled


def tune_batch(runner, image, boxes: np.ndarray, fill, ladder: tuple[int, ...],
               known_ms: float | None = None) -> tuple[Tuning, dict[int, np.ndarray]]:
    """Climb the runner's batch size along ``ladder`` on real batches of
    ``boxes``: up while a larger batch is faster per window, else down while a
    smaller one is (load makes larger batches pay off; cache sizes smaller
    ones). Each size counts the median of ``TUNE_BATCHES`` batches (the first
    at a new size pays the runtime's planning for that shape; one slowed by
    load elsewhere does not decide either). ``known_ms``: the current
    size's per-window time if already measured. Returns the tuning and the
    logits computed on the way, by index into ``boxes``."""
    rows: dict[int, np.ndarray] = {}
    timings: dict[int, float] = {}
    start = 0

    def timed(size: int) -> float | None:
        nonlocal start
        times = []
        for _ in range(TUNE_BATCHES):
            chunk = boxes[start : start + size]
            if len(chunk) < size:
                return None
            began = time.perf_counter()
            out = runner.occluded_logits(image, chunk, fill)
            times.append(1000 * (time.perf_counter() - began) / size)
            for offset, row in enumerate(out):
                rows[start + offset] = row
            start += size
        timings[size] = summarize(times)
        return timings[size]

    current = runner.batch_size
    if current not in ladder:
        return Tuning(current, timings, True), rows
    best_ms = known_ms if known_ms is not None else timed(current)
    if best_ms is None:
        return Tuning(current, timings, False), rows
    timings[current] = best_ms
    for step in (1, -1):
        moved = False
        index = ladder.index(current)
        while 0 <= index + step < len(ladder):
            size = ladder[index + step]
            ms = timed(size)
            if ms is None:
                return Tuning(current, timings, False), rows
            if ms >= TUNE_GAIN * best_ms:
                break
            current, best_ms, index, moved = size, ms, index + step, True
        if moved:
            break
    return Tuning(current, timings, True), rows
