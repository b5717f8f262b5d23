"""Helpers shared by the benchmark scripts: isolated measurement (time and peak
memory of one configuration in a fresh process), repetition with median and
spread (every verdict is taken on the median), a controlled background load,
real input images, and aligned result tables."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import importlib
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
LOAD_WARNING = 0.5  # load average per core above which timings are not trustworthy


def require(module: str, package: str):
    """Import a peer library, or stop with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"{package} is missing ({module} cannot be imported): run `pip install -r benchmarks/requirements.txt`")


# -- inputs ----------------------------------------------------------------
def sample_images(count: int, names: tuple[str, ...] = SAMPLE_IMAGES) -> list:
    """``count`` real photos from scikit-image, cycled; the adapter resizes them."""
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()) for name in names]
    return [photos[i % len(photos)] for i in range(count)]


def prepared_batch(adapter, count: int, names: tuple[str, ...] = SAMPLE_IMAGES) -> np.ndarray:
    """The normalized (count, 3, H, W) float32 batch, as cnnviz preprocesses it."""
    batch, _ = adapter.prepare(sample_images(count, names))
    return batch


# -- memory ----------------------------------------------------------------
# Peak memory is the peak resident set size (VmHWM) of a fresh process running
# one configuration, reset just before its first call (Linux clear_refs "5").
# It counts everything the process touches (torch's and onnxruntime's native
# buffers included, which tracemalloc cannot see). ru_maxrss is only a fallback:
# in a spawned child it can inherit the parent's peak through exec.
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as stream:
            match = re.search(rf"^{field}:\s+(\d+) kB", stream.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# -- isolated, interleaved measurement --------------------------------------
@dataclasses.dataclass
class Workload:
    """What a benchmark case builds in its child process: the call to time, and
    a function turning that call's output into (small) data for the checks."""

    run: Callable[[], Any]
    check_data: Callable[[Any], Any] = lambda output: None


@dataclasses.dataclass
class Config:
    """One configuration: ``case(**kwargs)`` builds its Workload; ``items`` is
    how many images one call processes, for per-image times."""

    label: str
    case: Callable[..., Workload]
    items: int = 1
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Measurement:
    label: str
    items: int
    best_s: float  # the minimum over the timed calls: the one least disturbed by the machine
    times_s: list[float]
    cpu_s: list[float]  # process CPU time of each timed call
    peak_mib: float  # peak RSS of the child over all its calls (cold and timed)
    extra_mib: float | None  # that peak minus the child's RSS just before the first call
    check: Any = None

    @property
    def per_item_ms(self) -> float:
        """Per-item median of the timed calls: what ratios and verdicts use
        (a best time flatters whichever tool was lucky with the machine)."""
        return self.median_ms

    @property
    def median_ms(self) -> float:
        return 1000 * float(np.median(self.times_s)) / self.items

    @property
    def median_s(self) -> float:
        """Median wall seconds of one timed call."""
        return float(np.median(self.times_s))

    @property
    def median_cpu_s(self) -> float:
        return float(np.median(self.cpu_s))

    @property
    def best_ms(self) -> float:
        """Per-item minimum: the call least disturbed by the machine."""
        return 1000 * self.best_s / self.items

    @property
    def cores_used(self) -> float:
        """CPU time over wall time of the best call: below the thread count when
        the call waited (for memory, for a core taken by another process)."""
        best = self.times_s.index(self.best_s)
        return self.cpu_s[best] / self.best_s

    @property
    def spread(self) -> float:
        """Slowest over fastest timed call: near 1 on a quiet machine."""
        return max(self.times_s) / self.best_s


# State of the child process a configuration runs in.
_workload: Workload | None = None
_check: Any = None
_rss_before: float | None = None  # None: the peak could not be reset, it spans the set-up too


def _child_prepare(case: Callable[..., Workload], kwargs: dict) -> None:
    global _workload, _check, _rss_before
    _workload = case(**kwargs)  # set-up: untimed
    gc.collect()
    before = current_rss_mib()
    _rss_before = before if reset_peak_rss() else None
    # The cold call is the warm-up. Its output is reduced to the check data at
    # once and dropped: kept, it could hold a whole autograd graph in memory.
    _check = _workload.check_data(_workload.run())


def _child_memory() -> tuple[float, float | None]:
    """Peak RSS since the first call: a runtime may grow its buffers after the
    first call (onnxruntime plans its memory on the second run)."""
    peak = peak_rss_mib()
    return peak, (None if _rss_before is None else peak - _rss_before)


def _child_time() -> tuple[float, float]:
    """Wall time of one call, and the CPU time the process spent in it."""
    start, cpu_start = time.perf_counter(), time.process_time()
    _workload.run()
    return time.perf_counter() - start, time.process_time() - cpu_start


def _child_check() -> Any:
    return _check


def measure(configs: list[Config], repeats: int) -> dict[str, Measurement]:
    """Each configuration in its own spawned process (so that its peak memory is
    its own), timed in rounds that visit every configuration once: a burst of
    load elsewhere on the machine then hits all of them alike. Every one of the
    ``repeats`` calls (after the cold one) is kept; ratios use their median."""
    context = multiprocessing.get_context("spawn")
    pools: dict[str, concurrent.futures.ProcessPoolExecutor] = {}
    try:
        for config in configs:  # prepared one after another: a cold call runs alone
            pools[config.label] = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
            pools[config.label].submit(_child_prepare, config.case, config.kwargs).result()
        samples: dict[str, list[tuple[float, float]]] = {config.label: [] for config in configs}
        for _ in range(repeats):
            for config in configs:
                samples[config.label].append(pools[config.label].submit(_child_time).result())
        memory = {config.label: pools[config.label].submit(_child_memory).result() for config in configs}
        return {
            config.label: Measurement(
                label=config.label,
                items=config.items,
                best_s=min(wall for wall, _ in samples[config.label]),
                times_s=[wall for wall, _ in samples[config.label]],
                cpu_s=[cpu for _, cpu in samples[config.label]],
                peak_mib=memory[config.label][0],
                extra_mib=memory[config.label][1],
                check=pools[config.label].submit(_child_check).result(),
            )
            for config in configs
        }
    finally:
        for pool in pools.values():
            pool.shutdown()


# -- repetition: median and spread -------------------------------------------
def median_spread(values) -> tuple[float, float]:
    """The median and the spread (largest over smallest; 1 = no variation)."""
    values = [float(v) for v in values]
    low = min(values)
    return float(np.median(values)), (max(values) / low if low > 0 else float("inf"))


def spread_text(values) -> str:
    """min-max range and spread, for a table cell."""
    values = [float(v) for v in values]
    return f"{min(values):.3g}-{max(values):.3g} (x{median_spread(values)[1]:.2f})"


def repeat(measurement: Callable[[], float], times: int) -> list[float]:
    """``measurement()`` called ``times`` times (each may start fresh processes)."""
    return [measurement() for _ in range(times)]


def fresh_process_seconds(command: list[str], env: dict | None = None, timeout: float = 1800) -> float:
    """Wall seconds of ``command`` in a fresh process (start-up included); it must succeed."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr[-1500:]}")
    return elapsed


def verdict(name: str, ratios, target: float, unit: str = "x") -> bool:
    """Print the median (and spread) of ``ratios`` against ``target`` (at most); True when met."""
    median, spread = median_spread(ratios)
    met = median <= target
    values = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"{name}: median {median:.2f}{unit} over {len(ratios)} ({values}; spread x{spread:.2f}) -> "
          f"{'meets' if met else 'MISSES'} <= {target:g}{unit}")
    return met


def _spin() -> None:
    while True:
        pass


class BackgroundLoad:
    """``processes`` processes each spinning on one core while the block runs:
    the controlled load of benchmarks/busy.py."""

    def __init__(self, processes: int = 1):
        self.processes = processes
        self._children: list = []

    def __enter__(self) -> "BackgroundLoad":
        context = multiprocessing.get_context("spawn")
        for _ in range(self.processes):
            child = context.Process(target=_spin, daemon=True)
            child.start()
            self._children.append(child)
        time.sleep(0.5)  # let them reach full speed
        return self

    def __exit__(self, *exc) -> None:
        for child in self._children:
            child.terminate()
        for child in self._children:
            child.join(5)
        self._children.clear()


# -- agreement checks ------------------------------------------------------
def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |a|, per map (first axis), worst map."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    axes = tuple(range(1, a.ndim))
    scale = np.maximum(np.abs(a).max(axis=axes), 1e-12)
    return float((np.abs(a - b).max(axis=axes) / scale).max())


def min_max_normalized(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1], as tools that normalize their output do."""
    maps = np.asarray(maps, np.float64)
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    return (maps - low) / np.maximum(maps.max(axis=axes, keepdims=True) - low, 1e-7)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation per map, worst map."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    denominator = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(((a * b).sum(axis=1) / denominator).min())


# -- output ----------------------------------------------------------------
def print_table(headers: list[str], rows: list[list[Any]], title: str = "") -> None:
    """Columns aligned: text to the left, numbers to the right."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    if title:
        print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def print_environment(title: str) -> None:
    """What the numbers depend on, and a warning when the machine is busy."""
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(title)
    print(
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {ort}, {cores} cores, {platform.processor() or platform.machine()}"
    )
    warn_if_busy(cores)


def warn_if_busy(cores: int | None = None) -> None:
    if not hasattr(os, "getloadavg"):
        return
    cores = cores or os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load / cores > LOAD_WARNING:
        print(f"WARNING: load average {load:.2f} on {cores} cores: other work is running, timings will be noisy")
