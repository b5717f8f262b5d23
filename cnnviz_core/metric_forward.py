"""Forward scores of many perturbed inputs, fast: what perturbation metrics
(deletion, insertion, pixel flipping, ROAD …) spend nearly all their time on.

The inputs of a whole job (every step of every image of a batch) are built
lazily, a chunk at a time, by the metric: ``build(start, stop, device)``
returns inputs ``start:stop`` as a numpy array or a torch tensor, best made on
``device`` (where the runner takes them: a GPU for eager torch on a GPU,
"cpu" otherwise). They go through one of the adapter's forward
runners (``ModelAdapter.forward_runners``: eager torch channels-last and
onnxruntime on a torch model, the session of an ONNX model) in full batches.
With ``runtime="auto"`` a job of at least :data:`PROBE_BATCHES` batches times
each offered runner on two quarter batches (their results are kept) and keeps
the fastest; the choice is
remembered for the model, input shape and device for the rest of the process.
Timings and the runner used go into ``metadata["forward"]``."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import numpy as np

from .adapter import select_scores
from .errors import MethodWarning

PROBE_BATCHES = 2  # a job of this many batches is timed on two quarter batches per runner, whose results are kept
BATCH = {"cpu": 64, "cuda": 128}
_decisions: dict[tuple, str] = {}  # (model, shape, device, runners) -> fastest runner's name


class ForwardScores:
    """Scores (logit or softmax probability of one class) of batches of inputs."""

    def __init__(self, adapter, score: str = "prob", runtime: str = "auto", batch_size: int | None = None,
                 metadata: dict | None = None):
        self.adapter, self.score, self.runtime = adapter, score, runtime
        self.offered = adapter.forward_runners()
        self.runners: dict[str, Any] = {}
        self.chosen: str | None = None
        self.info = (metadata if metadata is not None else {}).setdefault("forward", {"runtime": runtime})
        device = str(getattr(adapter, "device", "cpu"))
        self.batch_size = batch_size or BATCH["cuda" if device.startswith("cuda") else "cpu"]
        self.forwards = 0  # inputs run so far, for reports and benchmarks

    # -- runners ---------------------------------------------------------------
    def _runner(self, name: str):
        if name not in self.runners:
            self.runners[name] = self.offered[name]()
        return self.runners[name]

    def _run(self, name: str, build: Callable, start: int, stop: int) -> np.ndarray:
        runner = self._runner(name)
        chunk = build(start, stop, str(runner.device) if runner.takes == "torch" else "cpu")
        if runner.takes == "torch":
            import torch

            tensor = torch.as_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk
            tensor = tensor.to(runner.device, dtype=torch.float32, non_blocking=True)
            if runner.channels_last:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                logits = runner.forward(tensor)
        else:
            array = chunk if isinstance(chunk, np.ndarray) else chunk.detach().cpu().numpy()
            logits = runner.forward(np.ascontiguousarray(array, dtype=np.float32))
        self.forwards += len(chunk)
        return np.asarray(logits, dtype=np.float32).reshape(len(chunk), -1)

    def _key(self) -> tuple:
        digest = self.adapter.weights_digest()
        model = digest if digest is not None else (type(self.adapter).__qualname__, id(self.adapter))
        return (model, tuple(self.adapter.config.input_size), str(self.adapter.device), tuple(self.offered))

    def _decide(self, count: int, build: Callable, done: dict[int, np.ndarray]) -> str:
        """The runner for this job, chosen for good (``self.chosen``) unless the
        job was too small to time them; the probe's logits land in ``done``
        (chunk start -> logits)."""
        default = next(iter(self.offered))
        if self.runtime != "auto" or len(self.offered) == 1:
            self.chosen = default
            self.info.update(runner=default, how="default" if self.runtime != "auto" else "only runner")
            return default
        key = self._key()
        if key in _decisions and (_decisions[key] == default or _decisions[key] in self.offered):
            self.chosen = _decisions[key]
            self.info.update(runner=self.chosen, how="remembered")
            return self.chosen
        if count < PROBE_BATCHES * self.batch_size:  # this job only: a later, larger one may time them
            self.info.update(runner=default, how=f"job of {count} inputs too small to time the runners")
            return default
        timings: dict[str, float] = {}
        probe = max(8, self.batch_size // 4)  # small probe batches: the slow runners' cost stays small
        start = 0
        for name in self.offered:
            try:
                self._runner(name)
                stop = min(start + probe, count)
                done[start] = self._run(name, build, start, stop)  # warm-up, kept
                start, stop = stop, min(stop + probe, count)
                began = time.perf_counter()
                done[start] = self._run(name, build, start, stop)
                timings[name] = (time.perf_counter() - began) / max(stop - start, 1)
                start = stop
            except Exception as error:  # noqa: BLE001 - a runner that cannot be built or run is left out
                if name == default:
                    raise
                warnings.warn(MethodWarning(f"the {name} forward runner of {self.adapter.name!r} failed "
                                            f"({type(error).__name__}: {error}); continuing without it"), stacklevel=3)
                self.runners.pop(name, None)
        self.chosen = min(timings, key=timings.get)
        _decisions[key] = self.chosen
        self.info.update(runner=self.chosen, how="timed", ms_per_input={k: round(v * 1e3, 3) for k, v in timings.items()})
        return self.chosen

    # -- scores ----------------------------------------------------------------
    def logits_of(self, count: int, build: Callable[[int, int, str], Any]) -> np.ndarray:
        """(count, classes) logits of the inputs ``build(start, stop, device)`` makes, chunk by chunk,
        inside the adapter's session (a torch model in eval mode, restored after)."""
        with self.adapter.session():
            return self._logits_of(count, build)

    def _logits_of(self, count: int, build: Callable[[int, int, str], Any]) -> np.ndarray:
        done: dict[int, np.ndarray] = {}
        runner = self.chosen if self.chosen is not None else self._decide(count, build, done)
        self.info["batch_size"] = self.batch_size
        parts = []
        start = 0
        for begin in sorted(done):  # the probe's chunks, in order from 0
            if begin != start:
                break
            parts.append(done[begin])
            start += len(done[begin])
        while start < count:
            stop = min(start + self.batch_size, count)
            parts.append(self._run(runner, build, start, stop))
            start = stop
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def scores_of(self, count: int, build: Callable[[int, int, str], Any], classes: np.ndarray) -> np.ndarray:
        """(count,) scores of class ``classes[i]`` for the i-th built input, float64."""
        logits = self.logits_of(count, build)
        return select_scores(logits, np.asarray(classes, dtype=np.int64), self.score).astype(np.float64)

    def scores(self, inputs, classes: np.ndarray) -> np.ndarray:
        """Scores of an array (or tensor) of inputs already built."""
        return self.scores_of(len(inputs), lambda start, stop, device: inputs[start:stop], classes)
