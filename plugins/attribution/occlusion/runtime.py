"""Which runner computes occlusion's windows, for one run.

Candidates: the forward runners the adapter offers (its ``forward_runners``:
on a torch model eager torch and onnxruntime on the model's ONNX copy,
exported once and cached on disk; on an ONNX model its own session; on any
other adapter its ``logits``), and incremental inference where the adapter
has a torch module (the ``gradients`` capability). ``--runtime`` and
``--incremental`` force or exclude them. In auto mode the costly candidates
(an export, a trace) are only built once a job has enough windows to time a
few rounds of batches on each; the fastest (by median) is kept for the run,
remembered for later runs in the process and, with the tuned batch size, on
disk for later processes (``decision_cache``: keyed by weights, input,
window, runtime versions, CPU and thread count). A run on a remembered
decision checks its own speed against the remembered figure: a departure of
more than ``DEPARTURE`` times either way forgets the decision, here and on
disk, so the next windows (or the next process) probe again.

Everything decided is written into ``metadata`` (the result's metadata):
the runner, how it was chosen, the probe's per-window timings, the ONNX cache
entry, why incremental inference was or was not used, the speed check."""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from cnnviz_core import Capability, InputError, MethodError, MethodWarning, notes

from cnnviz_plugins.attribution.occlusion import decision_cache
from cnnviz_plugins.attribution.occlusion.backends import (
    BATCH_LADDER,
    Decision,
    IncrementalRunner,
    batched_runner,
    forget,
    probe_rounds,
    probe_runners,
    probe_size,
    remember,
    remember_batch,
    remembered,
    remembered_batch,
    tune_batch,
)
from cnnviz_plugins.attribution.occlusion.engine_cache import EngineCache

# auto times incremental inference only below this estimated FLOP fraction. The
# estimate counts conv and matmul work only: lite0 measured 2.1-2.5x faster than
# full torch passes at an estimate of 0.64, so the timing probe decides whenever
# the estimate leaves a chance.
INCREMENTAL_WORTH = 0.9
INCREMENTAL_BATCH = 32  # windows per incremental call: its patches are small, larger batches amortize them
RUNTIME_RUNNERS = {"torch": "torch", "onnx": "onnxruntime"}  # --runtime → the forward runner it names
_engines = EngineCache(size=2)  # traced models, by module (weakly), weights and shape
# A run on a remembered decision times its first WATCH_BATCHES full batches;
# their median more than DEPARTURE times off the remembered figure (either way:
# load came or went) sends the decision back to a probe.
WATCH_BATCHES = 3
DEPARTURE = 2.0
WATCH_MIN_MS = 20.0  # batches shorter than this (remembered and observed) are timer and scheduling noise: not judged


def incremental_class():
    """The IncrementalOcclusion class, imported only when asked for."""
    import importlib

    return importlib.import_module("cnnviz_plugins.attribution.occlusion.incremental.engine").IncrementalOcclusion


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


class RuntimeChoice:
    """The runners of one occlusion run and the decision among them."""

    def __init__(self, adapter, params, window: tuple[int, int], forward_batch: int, metadata: dict,
                 load_incremental: Callable[[], type] = incremental_class):
        self.adapter, self.params, self.window = adapter, params, window
        self.shape = (3, *adapter.config.input_size)
        self.forward_batch = forward_batch
        self.runtime = metadata.setdefault("runtime", {"requested": params.runtime, "batch_size": forward_batch})
        self.incremental = metadata.setdefault("incremental", {"requested": params.incremental, "used": False})
        self._load_incremental = load_incremental
        self.offered = adapter.forward_runners()  # name → build; the first is the cheap default
        self.traceable = Capability.GRADIENTS in adapter.capabilities  # adapter.module: a torch module to trace
        self.runners: dict[str, object] = {}
        # auto mode: candidates whose set-up costs (an export, a trace) wait until a probe needs them
        self.pending: dict[str, tuple[int, Callable[[], object | None]]] = {}
        self.decision: Decision | None = None
        self.tuned = params.batch_size is not None  # a batch size the user gives is kept as it is
        if self.tuned:
            self.runtime["batch_tuning"] = {"how": "given"}
        self._model_key: tuple | None = None
        self._decision_key: tuple | None = None
        self._disk_fields: dict | None = None
        self._watching = False  # the decided runner's speed is being (or has been) timed
        self._full = None
        self._plan()
        if len(self.runners) == 1 and not self.pending:
            forced = params.runtime != "auto" or params.incremental == "on"
            self._decide(Decision(next(iter(self.runners)), {}, "forced" if forced else "only option"))

    # -- candidates -------------------------------------------------------------
    def _plan(self) -> None:
        p, name = self.params, self.adapter.name
        wanted = RUNTIME_RUNNERS.get(p.runtime)  # None: auto
        if wanted is not None and wanted not in self.offered:
            raise InputError(f"occlusion: --runtime {p.runtime} needs a model that runs on {wanted}; {name!r} offers "
                             f"{', '.join(self.offered)}: use --runtime auto")
        if p.incremental == "on" and not self.traceable:
            raise InputError(f"occlusion: --incremental on needs a torch model (one with the gradients capability) to "
                             f"trace; {name!r} has none: use --incremental auto or off")
        if not self.traceable:
            self.incremental["reason"] = "needs a torch model to trace (the gradients capability); this model has none"
        if p.incremental == "on":
            self.runners["incremental"] = self._incremental(forced=True)
            return
        default = wanted or next(iter(self.offered))
        self.runners[default] = self._runner(default, forced=True)
        if wanted is None:
            for other in list(self.offered)[1:]:
                self.pending[other] = (self.forward_batch, lambda other=other: self._runner(other, forced=False))
        if p.incremental == "auto" and self.traceable and wanted != "onnxruntime":
            batch = p.batch_size or INCREMENTAL_BATCH
            self.pending["incremental"] = (batch, lambda: self._incremental(forced=False))

    def _runner(self, name: str, forced: bool):
        """One of the adapter's forward runners, built now. Forced (asked for,
        or the default): a failure is an error; in auto mode it is a warning,
        and the run goes on without it."""
        try:
            runner = self.offered[name]()
        except Exception as error:  # noqa: BLE001 - any export or load failure has the same remedy
            reason = _one_line(error)
            if forced:
                flags = [flag for flag, runner_name in RUNTIME_RUNNERS.items() if runner_name in self.offered and runner_name != name]
                instead = " or ".join(f"--runtime {flag}" for flag in [*flags, "auto"])
                asked = f"--runtime {self.params.runtime}: " if self.params.runtime != "auto" else ""
                raise MethodError("occlusion", f"{asked}the {name} runner of {self.adapter.name!r} could not be set up "
                                               f"({reason}); use {instead}") from None
            warnings.warn(MethodWarning(f"occlusion: the {name} runner of {self.adapter.name!r} could not be set up "
                                        f"({reason}); continuing without it"), stacklevel=2)
            self.runtime.setdefault("runner_errors", {})[name] = reason
            return None
        self.runtime.update(runner.facts)
        return batched_runner(runner, self.shape, self.forward_batch)

    def _full_runner(self):
        """Full forward passes beside incremental inference (its clean logits)."""
        if self._full is None:
            first = next(iter(self.offered))
            self._full = self.runners.get(first) or self._runner(first, forced=True)
        return self._full

    def _incremental(self, forced: bool) -> IncrementalRunner | None:
        """The incremental runner; in auto mode None, with the reason recorded,
        when it cannot run this model or would save too little."""
        record = self.incremental
        # the estimate of an earlier trace of this model spares auto mode a trace that would be thrown away
        digest = self.adapter.weights_digest()
        note = f"incremental_flop_fraction|{digest}|{self.shape}|{self.window}" if digest is not None else None
        noted = notes.read(note) if note is not None else None
        if not forced and isinstance(noted, (int, float)) and noted >= INCREMENTAL_WORTH:
            record["estimated_flop_fraction"] = round(float(noted), 4)
            record["reason"] = f"estimated to need {noted:.0%} of full passes' FLOPs (noted by an earlier trace): too little saved"
            return None
        try:
            engine = self._engine(digest)
        except ImportError as error:
            if forced:
                raise MethodError("occlusion", f"--incremental on: incremental inference is not available ({error})") from None
            record["reason"] = f"not available: {_one_line(error)}"
            return None
        except MethodError as error:
            if forced:
                raise
            record["reason"] = f"model not supported: {error}"
            return None
        fraction = float(engine.estimated_flop_fraction(self.window))
        if note is not None:
            notes.write(note, fraction)
        record["estimated_flop_fraction"] = round(fraction, 4)
        record["detail"] = engine.describe()
        if not forced and fraction >= INCREMENTAL_WORTH:
            record["reason"] = f"estimated to need {fraction:.0%} of full passes' FLOPs: too little saved to time it"
            return None
        batch = self.params.batch_size or INCREMENTAL_BATCH
        return IncrementalRunner(engine, self._full_runner(), self.adapter.device, batch)

    def _engine(self, digest: str | None):
        """The traced model, kept for later runs on the same module, weights and shape."""
        module = self.adapter.module
        key = (digest if digest is not None else id(module), self.shape, str(self.adapter.device))
        return _engines.get(module, key, lambda: self._load_incremental().build(module, (1, *self.shape)))

    def _build(self, names) -> None:
        for name in names:
            _, make = self.pending.pop(name)
            runner = make()
            if runner is not None:
                self.runners[name] = runner

    # -- deciding ------------------------------------------------------------------
    def _decide(self, decision: Decision) -> None:
        self.decision = decision
        self.runtime.update(decision.describe(), **self.runners[decision.chosen].describe())
        self.incremental["used"] = decision.chosen == "incremental"

    def _key(self) -> tuple:
        """The in-process key of this run's decision, taken once, before any
        candidate is built (a failed build must not change it)."""
        if self._decision_key is not None:
            return self._decision_key
        names = tuple(sorted({*self.runners, *self.pending}))
        window = self.window if "incremental" in names else None  # only incremental inference depends on it
        if self._model_key is None:
            digest = self.adapter.weights_digest()
            # a model that cannot tell its weights apart is itself for this process only
            self._model_key = (digest,) if digest is not None else (type(self.adapter).__qualname__, id(self.adapter))
        self._decision_key = (self._model_key, self.shape, str(self.adapter.device), self.forward_batch, window, names)
        if len(self._model_key) == 1:  # a weights digest: the decision can be kept on disk too
            self._disk_fields = decision_cache.key_fields(self._model_key[0], self.shape, self.window, self.params.stride,
                                                          str(self.adapter.device), self.forward_batch, names)
        return self._decision_key

    def _save(self, batch_size: int | None, ms_per_window: float | None) -> None:
        """Keep the decision on disk for later processes."""
        if self._disk_fields is None or self.decision is None or not ms_per_window:
            return
        decision_cache.store(self._disk_fields, decision_cache.Record(
            self.decision.chosen, dict(self.decision.probe_ms_per_window), batch_size, float(ms_per_window)))

    def _forget(self) -> None:
        forget(self._key())
        if self._disk_fields is not None:
            decision_cache.drop(self._disk_fields)

    def _watch(self, record: decision_cache.Record | None) -> None:
        """Time the run's first ``WATCH_BATCHES`` full batches on the decided
        runner. On a remembered decision, check their median against the
        remembered figure (see ``DEPARTURE``); on a decision probed and tuned in
        this run (``record`` None), keep their median on disk as the figure: a
        median of real batches, steadier than the probe's few."""
        if self.decision is None or (record is not None and record.chosen != self.decision.chosen):
            return
        runner = self.runners[self.decision.chosen]
        samples: list[float] = []
        self._watching = True

        def on_batch(windows: int, seconds: float) -> None:
            if windows < max(1, runner.batch_size // 2):
                return  # an image's short last batch: its per-window time is not comparable
            samples.append(1000 * seconds / windows)
            if len(samples) < WATCH_BATCHES:
                return
            runner.on_batch = None
            observed = float(np.median(samples))
            if record is None:
                self._save(runner.batch_size, observed)
                self.runtime["speed_kept"] = {"ms_per_window": round(observed, 3), "batches": len(samples)}
                return
            check = {"remembered_ms_per_window": round(record.ms_per_window, 3),
                     "observed_ms_per_window": round(observed, 3), "batches": len(samples)}
            if max(observed, record.ms_per_window) * runner.batch_size < WATCH_MIN_MS:
                check["verdict"] = f"batches under {WATCH_MIN_MS:g} ms: too short to judge"
            elif 1 / DEPARTURE <= observed / record.ms_per_window <= DEPARTURE:
                check["verdict"] = "as remembered"
            else:
                check["verdict"] = "departed: decision forgotten, the next windows or run probe again"
                self._forget()
                self.decision = None
                self.tuned = self.params.batch_size is not None
                self._watching = False
            self.runtime["speed_check"] = check

        runner.on_batch = on_batch

    def default(self) -> str:
        """What runs before (or without) a probe: the adapter's first runner
        (eager torch on a torch model), else the only one."""
        first = next(iter(self.offered))
        return first if first in self.runners else next(iter(self.runners))

    @property
    def chosen(self) -> str:
        return self.decision.chosen if self.decision is not None else self.default()

    def runner(self, name: str | None = None):
        return self.runners[name or self.chosen]

    def settle(self, image, boxes: np.ndarray, fill) -> dict[int, np.ndarray]:
        """Before these windows run: decide the runner if not decided yet, then
        its batch size if not tuned yet (see :meth:`_decide_runner` and
        :func:`tune_batch`). Returns the logits computed meanwhile, by index
        into ``boxes`` from the first: nothing is wasted."""
        rows = self._decide_runner(image, boxes, fill) if self.decision is None else {}
        if self.decision is not None and not self.tuned:
            done = len(rows)
            tuned = self._tune(image, boxes[done:], fill)
            rows.update({done + i: row for i, row in tuned.items()})
        if self.decision is not None and self.decision.how == "probe" and self.tuned and not self._watching:
            self._watch(None)  # the figure a later run is checked against: this run's own batches
        return rows

    def _tune(self, image, boxes: np.ndarray, fill) -> dict[int, np.ndarray]:
        name = self.decision.chosen
        runner = self.runners[name]
        key = (self._key(), name)
        known = remembered_batch(key)
        how = "remembered on disk" if self.decision.how == "remembered on disk" else "remembered"
        if known is None and self._disk_fields is not None:  # a forced runner's batch size, kept by an earlier process
            record = decision_cache.load(self._disk_fields)
            if record is not None and record.chosen == name and record.batch_size is not None:
                known, how = record.batch_size, "remembered on disk"
        if known is not None:
            runner.batch_size = known
            self.tuned = True
            self.runtime.update(batch_size=runner.batch_size, batch_tuning={"how": how})
            return {}
        ladder = BATCH_LADDER["cuda" if str(getattr(runner, "device", "cpu")).startswith("cuda") else "cpu"]
        # the probe's figure is this runner's at its current size only when measured in this run
        measured = self.decision.probe_ms_per_window.get(name) if self.decision.how == "probe" else None
        watching, runner.on_batch = runner.on_batch, None  # tuning batches of other sizes are not the run's pace
        try:
            tuning, rows = tune_batch(runner, image, boxes, fill, ladder, measured)
        finally:
            runner.on_batch = watching
        runner.batch_size = tuning.batch_size
        self.tuned = tuning.complete
        if tuning.complete:
            remember_batch(key, tuning.batch_size)
            self._save(tuning.batch_size, tuning.ms_per_window.get(tuning.batch_size))
        self.runtime.update(batch_size=runner.batch_size, batch_tuning={
            "how": "tuned" if tuning.complete else "windows ran out before tuning finished",
            "ms_per_window": {size: round(ms, 3) for size, ms in sorted(tuning.ms_per_window.items())}})
        return rows

    def _decide_runner(self, image, boxes: np.ndarray, fill) -> dict[int, np.ndarray]:
        """Reuse a decision remembered in this process or on disk, or time a
        few rounds of batches of ``boxes`` on each candidate when there are
        enough of them. Returns the logits the probe computed, by index into
        ``boxes``."""
        key = self._key()
        record = decision_cache.load(self._disk_fields) if self._disk_fields is not None else None
        known = remembered(key)
        if known is None and record is not None:
            known = Decision(record.chosen, record.probe_ms_per_window, "remembered on disk")
            remember(key, known)
            if record.batch_size is not None:
                remember_batch((key, record.chosen), record.batch_size)
        if known is not None:
            if known.chosen in self.pending:
                self._build([known.chosen])
            if known.chosen in self.runners:
                self._decide(known)
                self._watch(record)
                return {}
        for runner in self.runners.values():
            runner.on_batch = None  # a probe times for itself
        sizes = [r.batch_size for r in self.runners.values()] + [size for size, _ in self.pending.values()]
        if len(boxes) < probe_size(sizes):
            self.runtime.update(chosen=self.default(), how="job too small to probe", **self.runner(self.default()).describe())
            return {}
        self._build(list(self.pending))
        if len(self.runners) == 1:
            self._decide(Decision(next(iter(self.runners)), {}, "only option left"))
            return {}

        def failed(name: str, error: BaseException) -> None:
            warnings.warn(MethodWarning(f"occlusion: the {name} runner failed during the timing probe "
                                        f"({_one_line(error)}); continuing without it"), stacklevel=4)
            self.runners.pop(name, None)

        rounds = probe_rounds(len(boxes), [r.batch_size for r in self.runners.values()])
        decision, rows = probe_runners(dict(self.runners), image, boxes, fill, failed, rounds)
        self._decide(decision)
        remember(key, decision)
        self.runtime["probe_rounds"] = rounds
        # kept now, so that a run whose windows run out before the batch size is tuned still spares the next one
        # its probe; a completed tuning replaces the record with its batch size and figure
        batch = self.runners[decision.chosen].batch_size if self.tuned else None
        self._save(batch, decision.probe_ms_per_window[decision.chosen])
        return rows
