"""Which runner computes occlusion's windows, for one run.

Candidates on a torch model: eager torch; onnxruntime on the model's ONNX copy
(exported once, cached on disk); incremental inference. ``--runtime`` and
``--incremental`` force or exclude them. In auto mode the costly candidates
(an export, a trace) are only built once a job has enough windows to time a
couple of batches on each; the fastest is kept for the run and remembered for
later runs in the process. Other adapters run their own ``logits``.

Everything decided is written into ``metadata`` (the result's metadata):
the runner, how it was chosen, the probe's per-window timings, the ONNX cache
entry, why incremental inference was or was not used."""

from __future__ import annotations

import collections
import os
import threading
import warnings
from typing import Callable

import numpy as np

from cnnviz_core.errors import InputError, MethodError, MethodWarning

from cnnviz_plugins.attribution.occlusion.backends import (
    BATCH_LADDER,
    Decision,
    IncrementalRunner,
    adapter_runner,
    probe_runners,
    probe_size,
    remember,
    remember_batch,
    remembered,
    remembered_batch,
    session_runner,
    torch_runner,
    tune_batch,
)

# auto times incremental inference only below this estimated FLOP fraction. The
# estimate counts conv and matmul work only: lite0 measured 2.1-2.5x faster than
# full torch passes at an estimate of 0.64, so the timing probe decides whenever
# the estimate leaves a chance.
INCREMENTAL_WORTH = 0.9
INCREMENTAL_BATCH = 32  # windows per incremental call: its patches are small, larger batches amortize them
_engines: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()  # traced models, by weights and shape
_engines_lock = threading.Lock()


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
        self.runners: dict[str, object] = {}
        # auto mode: candidates whose set-up costs (an export, a trace) wait until a probe needs them
        self.pending: dict[str, tuple[int, Callable[[], object | None]]] = {}
        self.decision: Decision | None = None
        self.tuned = params.batch_size is not None  # a batch size the user gives is kept as it is
        if self.tuned:
            self.runtime["batch_tuning"] = {"how": "given"}
        if adapter.kind == "torch":
            self._plan_torch()
        else:
            self._plan_other()
        if len(self.runners) == 1 and not self.pending:
            forced = params.runtime != "auto" or params.incremental == "on"
            self._decide(Decision(next(iter(self.runners)), {}, "forced" if forced else "only option"))

    # -- candidates -------------------------------------------------------------
    def _plan_other(self) -> None:
        p, kind, name = self.params, self.adapter.kind, self.adapter.name
        if p.runtime == "torch":
            raise InputError(f"occlusion: --runtime torch needs a torch model; {name!r} is a {kind} model that runs on "
                             "its own runtime: use --runtime auto")
        if p.incremental == "on":
            raise InputError(f"occlusion: --incremental on needs a torch model; {name!r} is a {kind} model: "
                             "use --incremental auto or off")
        self.runners[kind] = adapter_runner(self.adapter, self.shape, self.forward_batch)
        self.incremental["reason"] = f"torch models only; this is a {kind} model"

    def _plan_torch(self) -> None:
        p = self.params
        self._torch = torch_runner(self.adapter.module, self.adapter.device, self.shape, self.forward_batch)
        if p.incremental == "on":
            self.runners["incremental"] = self._incremental(forced=True)
            return
        if p.runtime in ("auto", "torch"):
            self.runners["torch"] = self._torch
        if p.runtime == "onnx":
            self.runners["onnxruntime"] = self._onnx(forced=True)
        elif p.runtime == "auto":
            self.pending["onnxruntime"] = (self.forward_batch, lambda: self._onnx(forced=False))
        if p.incremental == "auto" and p.runtime != "onnx":
            batch = p.batch_size or INCREMENTAL_BATCH
            self.pending["incremental"] = (batch, lambda: self._incremental(forced=False))

    def _incremental(self, forced: bool) -> IncrementalRunner | None:
        """The incremental runner; in auto mode None, with the reason recorded,
        when it cannot run this model or would save too little."""
        record = self.incremental
        from cnnviz_adapters.onnx_runtime_cache import module_digest, read_note, write_note

        # the estimate of an earlier trace of this model spares auto mode a trace that would be thrown away
        note = f"incremental_flop_fraction|{module_digest(self.adapter.module)}|{self.shape}|{self.window}"
        noted = read_note(note)
        if not forced and isinstance(noted, (int, float)) and noted >= INCREMENTAL_WORTH:
            record["estimated_flop_fraction"] = round(float(noted), 4)
            record["reason"] = f"estimated to need {noted:.0%} of full passes' FLOPs (noted by an earlier trace): too little saved"
            return None
        try:
            engine = self._engine()
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
        write_note(note, fraction)
        record["estimated_flop_fraction"] = round(fraction, 4)
        record["detail"] = engine.describe()
        if not forced and fraction >= INCREMENTAL_WORTH:
            record["reason"] = f"estimated to need {fraction:.0%} of full passes' FLOPs: too little saved to time it"
            return None
        batch = self.params.batch_size or INCREMENTAL_BATCH
        return IncrementalRunner(engine, self._torch, self.adapter.device, batch)

    def _engine(self):
        """The traced model, kept for later runs on the same weights and shape."""
        from cnnviz_adapters.onnx_runtime_cache import module_digest

        key = (module_digest(self.adapter.module), self.shape, str(self.adapter.device))
        with _engines_lock:
            if key in _engines:
                _engines.move_to_end(key)
                return _engines[key]
        engine = self._load_incremental().build(self.adapter.module, (1, *self.shape))
        with _engines_lock:
            _engines[key] = engine
            while len(_engines) > 2:
                _engines.popitem(last=False)
        return engine

    def _onnx(self, forced: bool):
        """Export (or find in the cache) the model's ONNX copy and open a session."""
        from cnnviz_adapters.onnx_runtime_cache import cached_session

        try:
            session, cached = cached_session(self.adapter)
        except Exception as error:  # noqa: BLE001 - any export or load failure has the same remedy
            reason = _one_line(error)
            if forced:
                raise MethodError("occlusion", f"--runtime onnx: {self.adapter.name!r} could not be exported to or "
                                               f"loaded in onnxruntime ({reason}); use --runtime torch or auto") from None
            warnings.warn(MethodWarning(f"occlusion: {self.adapter.name!r} could not be exported to ONNX ({reason}); "
                                        "its forward passes run in torch"), stacklevel=2)
            self.runtime["onnx_error"] = reason
            return None
        self.runtime["onnx_cache"] = cached.describe()
        self.runtime["providers"] = list(session.get_providers())
        return session_runner(session, self.shape, self.forward_batch)

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
        from cnnviz_adapters.onnx_runtime_cache import module_digest

        names = tuple(sorted({*self.runners, *self.pending}))
        window = self.window if "incremental" in names else None  # only incremental inference depends on it
        if self.adapter.kind == "torch":
            model = module_digest(self.adapter.module)
        else:  # a model file (ONNX), or whatever else names the model
            path = getattr(self.adapter, "path", None)
            model = (self.adapter.kind, os.path.abspath(path), os.path.getmtime(path)) if path else (self.adapter.kind, id(self.adapter))
        return (model, self.shape, str(self.adapter.device), self.forward_batch, window, names)

    def default(self) -> str:
        """What runs before (or without) a probe: torch, else the only runner."""
        return "torch" if "torch" in self.runners else next(iter(self.runners))

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
        return rows

    def _tune(self, image, boxes: np.ndarray, fill) -> dict[int, np.ndarray]:
        name = self.decision.chosen
        runner = self.runners[name]
        key = (self._key(), name)
        known = remembered_batch(key)
        if known is not None:
            runner.batch_size = known
            self.tuned = True
            self.runtime.update(batch_size=runner.batch_size, batch_tuning={"how": "remembered"})
            return {}
        ladder = BATCH_LADDER["cuda" if str(getattr(runner, "device", "cpu")).startswith("cuda") else "cpu"]
        tuning, rows = tune_batch(runner, image, boxes, fill, ladder, self.decision.probe_ms_per_window.get(name))
        runner.batch_size = tuning.batch_size
        self.tuned = tuning.complete
        if tuning.complete:
            remember_batch(key, tuning.batch_size)
        self.runtime.update(batch_size=runner.batch_size, batch_tuning={
            "how": "tuned" if tuning.complete else "windows ran out before tuning finished",
            "ms_per_window": {size: round(ms, 3) for size, ms in sorted(tuning.ms_per_window.items())}})
        return rows

    def _decide_runner(self, image, boxes: np.ndarray, fill) -> dict[int, np.ndarray]:
        """Reuse a decision remembered in this process, or time a couple of
        batches of ``boxes`` on each candidate when there are enough of them.
        Returns the logits the probe computed, by index into ``boxes``."""
        key = self._key()
        known = remembered(key)
        if known is not None:
            if known.chosen in self.pending:
                self._build([known.chosen])
            if known.chosen in self.runners:
                self._decide(known)
                return {}
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

        decision, rows = probe_runners(dict(self.runners), image, boxes, fill, failed)
        self._decide(decision)
        remember(key, decision)
        return rows
