"""``cnnviz_core.evaluate``: every attribution method against every metric
over the same images, with model-free references beside them, one
leaderboard, per-image scores kept and resumable.

Images go chunk by chunk (``batch_size`` images): each method's maps of a
chunk are computed once (or read back) and handed to every metric; each
reference a metric asks for is scored like a method. With ``out`` every
finished chunk's maps and scores are kept (see :mod:`.units`), so a rerun of
the same call skips them, and the leaderboard is written there."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..metric import Metric, MetricBatch, MetricResult, MetricScores, summarize
from .references import REFERENCES, reference_label
from .units import UnitStore, digest


@dataclasses.dataclass
class Chunk:
    index: int
    inputs: np.ndarray
    names: list[str]
    sources: list[str | None]
    positions: np.ndarray | None = None  # the items' positions in the dataset (a dataset run's store index)


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` returns: a :class:`MetricResult` per (method,
    metric), the methods and references in leaderboard order, and the files
    written (with ``out``)."""

    results: dict[tuple[str, str], MetricResult]
    methods: list[str]
    references: list[str]
    metrics: list[str]
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    reused: int = 0  # chunks of work read back from an earlier run instead of computed

    def result(self, method: str, metric: str) -> MetricResult:
        return self.results[(method, metric)]

    def rows(self) -> list[dict[str, Any]]:
        """One row per (method or reference, metric): the leaderboard's CSV rows."""
        from .leaderboard import rows

        return rows(self)

    def summary_lines(self) -> list[str]:
        from .leaderboard import text_table

        return text_table(self).splitlines()


def _named(spec, what: str) -> dict[str, dict[str, Any]]:
    if isinstance(spec, str):
        return {spec: {}}
    if isinstance(spec, dict):
        return {name: dict(params or {}) for name, params in spec.items()}
    if isinstance(spec, Sequence) and spec and all(isinstance(n, str) for n in spec):
        return {name: {} for name in spec}
    raise InputError(f"give the {what} as a list of names or a dict name -> parameters, got {spec!r}")


def _checked(adapter, methods, metrics):
    from ..api import check_capabilities
    from ..registry import get_registry

    registry = get_registry()
    method_classes, metric_classes = {}, {}
    for name, params in methods.items():
        cls = registry.method(name)
        if cls.kind != "attribution":
            raise InputError(f"{name} is a {cls.kind} method; evaluate scores attribution methods (see `cnnviz methods --kind attribution`)")
        check_capabilities(cls, adapter)
        method_classes[name] = (cls, cls.make_params(**params))
    for name, params in metrics.items():
        cls = registry.method(name)
        if not issubclass(cls, Metric):
            raise InputError(f"{name} is a {cls.kind} method, not a metric; see `cnnviz methods --kind metric`")
        check_capabilities(cls, adapter)
        metric_classes[name] = (cls, cls.make_params(**params))
    return method_classes, metric_classes


def _image_chunks(adapter, images, size: int) -> tuple[Callable[[], Iterator[Chunk]], list[str]]:
    batch, names = adapter.prepare(images)
    items = images if isinstance(images, (list, tuple)) else [images]
    sources = [os.fspath(i) if isinstance(i, (str, os.PathLike)) and os.path.isfile(i) else None for i in items]
    sources = sources if len(sources) == len(names) else [None] * len(names)

    def chunks() -> Iterator[Chunk]:
        for k, start in enumerate(range(0, len(batch), size)):
            yield Chunk(k, batch[start:start + size], names[start:start + size], sources[start:start + size])

    return chunks, list(names)


def _dataset_chunks(adapter, dataset, size: int) -> tuple[Callable[[], Iterator[Chunk]], str]:
    from ..dataset import Dataset

    source = Dataset.from_spec(dataset)

    def chunks() -> Iterator[Chunk]:
        for k, part in enumerate(source.batches(adapter.config, size)):
            entries = [source.entry(int(i)) for i in part.indices]
            sources = [os.fspath(e[0]) if e is not None and isinstance(e[0], (str, os.PathLike)) else None for e in entries]
            yield Chunk(k, part.inputs, list(part.names), sources, np.asarray(part.indices))

    return chunks, source.description


def evaluate(
    model: Any,
    methods: Sequence[str] | dict[str, dict[str, Any]],
    metrics: Sequence[str] | dict[str, dict[str, Any]],
    images: Any = None,
    *,
    dataset: Any = None,
    target: Any = None,
    out: str | os.PathLike | None = None,
    references: bool | Sequence[str] = True,
    annotations: str | os.PathLike | None = None,
    maps_from: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | None = None,
    resume: bool = True,
    progress: bool | None = None,
    on_unit: Callable[[str, str, int, bool], None] | None = None,
) -> Evaluation:
    """Score every method's maps with every metric.

    ``methods``/``metrics``: names, or dicts name -> parameters. ``images``
    (paths, ``skimage:NAME``, arrays — as :func:`cnnviz_core.run` takes them)
    or ``dataset`` (a folder, list file, glob or list of paths). ``target``:
    None (each image's top-1 class), or a class for all. ``references``: also
    score the model-free references each metric names (random, uniform, Sobel;
    a list of names keeps only those).
    ``out``: keep per-chunk maps and scores (a rerun with the same arguments
    reuses them; ``resume=False`` recomputes) and write the leaderboard
    (leaderboard.csv, scores.csv, leaderboard.png, leaderboard.html, one
    curves PNG per metric with curves). ``maps_from``: the output folder of
    a dataset run (:func:`cnnviz_core.run_dataset`): the maps of the methods
    it holds are read from it, not computed (with the parameters it was run
    with), and its dataset is the default ``dataset``. ``on_unit(method,
    metric, chunk, reused)`` is called after each chunk of work."""
    from ..api import load_model, placed, scheduler_for
    from ..targets import parse_targets

    stored = None
    if maps_from is not None:
        from ..store import open_results

        stored = open_results(maps_from)
        if images is not None:
            raise InputError("maps_from reads a dataset run's maps: evaluate on its dataset (dataset=...), not on images")
        dataset = dataset if dataset is not None else stored.record["key"]["dataset"]
    if (images is None) == (dataset is None):
        raise InputError("give either images or a dataset to evaluate on")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    adapter = load_model(model)
    method_specs, metric_specs = _named(methods, "methods"), _named(metrics, "metrics")
    if stored is not None:
        method_specs = _stored_params(stored, method_specs, adapter, target)
    method_classes, metric_classes = _checked(adapter, method_specs, metric_specs)
    reference_names = sorted({r for cls, _ in metric_classes.values() for r in cls.references}) if references else []
    if not isinstance(references, bool):
        wanted = [references] if isinstance(references, str) else list(references)
        unknown = [r for r in wanted if r not in REFERENCES]
        if unknown:
            raise InputError(f"unknown reference map(s) {unknown}; known: {', '.join(REFERENCES)}")
        reference_names = [r for r in reference_names if r in wanted]
    unknown = [r for r in reference_names if r not in REFERENCES]
    if unknown:
        raise InputError(f"unknown reference map(s) {unknown}; known: {', '.join(REFERENCES)}")
    if images is not None:
        chunks, described = _image_chunks(adapter, images, batch_size)
    else:
        chunks, described = _dataset_chunks(adapter, dataset, batch_size)
    weights = adapter.weights_digest()
    store = UnitStore(os.fspath(out) if out is not None else None, reusable=resume and weights is not None)
    model_key = {"model": {k: v for k, v in adapter.describe().items() if k not in ("device", "providers")},
                 "weights": weights, "target": target if target is None or isinstance(target, (int, str)) else str(target),
                 "annotations": os.fspath(annotations) if annotations is not None else None}
    collected: dict[tuple[str, str], list[MetricScores]] = {}
    names_seen: list[str] = []
    with placed(adapter, scheduler_for(adapter, device, None, progress)) as scheduler:
        method_objects = {name: cls(adapter, params, scheduler) for name, (cls, params) in method_classes.items()}
        metric_objects = {name: cls(adapter, params, scheduler) for name, (cls, params) in metric_classes.items()}
        with adapter.session():
            for metric in metric_objects.values():
                metric.setup()
        for chunk in chunks():
            names_seen += chunk.names
            targets = parse_targets(target, len(chunk.inputs), adapter.num_classes, adapter.labels)
            chunk_key = {**model_key, "names": chunk.names}
            runs = [(name, dataclasses.asdict(obj.params),
                     _stored_maps(stored, name, chunk, obj) if stored is not None and name in stored.methods
                     else _method_maps(obj, targets)) for name, obj in method_objects.items()]
            runs += [(reference_label(r), {}, _reference_maps(REFERENCES[r], adapter, targets)) for r in reference_names]
            for label, params, (make_maps, explain) in runs:
                maps_key = digest({**chunk_key, "method": label, "params": params})
                maps = None
                for metric_name, metric in metric_objects.items():
                    if label.startswith("reference:") and label.split(":", 1)[1] not in metric.references:
                        continue
                    score_key = digest({**chunk_key, "method": label, "params": params, "metric": metric_name,
                                        "metric_params": dataclasses.asdict(metric.params)})
                    scores = store.read_scores(label, metric_name, chunk.index, score_key)
                    reused = scores is not None
                    if scores is None:
                        if maps is None:
                            maps = store.read_maps(label, chunk.index, maps_key)
                            if maps is None:
                                maps = make_maps(chunk.inputs)
                                store.write_maps(label, chunk.index, maps_key, *maps)
                        batch = MetricBatch(chunk.inputs, np.asarray(maps[0], np.float32), np.asarray(maps[1], np.int64),
                                            chunk.names, label, explain, chunk.sources,
                                            os.fspath(annotations) if annotations is not None else None)
                        with adapter.session():
                            scores = metric.evaluate(batch)
                        scores = scores.check(metric_name, len(chunk.inputs))
                        store.write_scores(label, metric_name, chunk.index, score_key, scores)
                    collected.setdefault((label, metric_name), []).append(scores)
                    if on_unit is not None:
                        on_unit(label, metric_name, chunk.index, reused)
    evaluation = _assemble(collected, names_seen, method_objects, metric_objects, reference_names)
    evaluation.reused = store.reused
    if out is not None:
        from .leaderboard import write_all

        evaluation.files = write_all(evaluation, os.fspath(out), {"model": adapter.describe(), "weights": weights,
                                                                  "source": described if isinstance(described, str) else f"{len(names_seen)} images"})
    return evaluation


def _method_maps(method, targets):
    """(make_maps(inputs) -> (maps, classes), explain(inputs, classes) -> maps) for an attribution method."""
    from ..targets import parse_targets

    adapter = method.adapter

    def make_maps(inputs):
        result = method.run(np.asarray(inputs, np.float32), targets)
        return result.maps.astype(np.float32), np.asarray(result.classes, np.int64)

    def explain(inputs, classes):
        wanted = parse_targets([int(c) for c in classes], len(classes), adapter.num_classes, adapter.labels)
        return method.run(np.asarray(inputs, np.float32), wanted).maps.astype(np.float32)

    return make_maps, explain


def _stored_params(stored, specs: dict, adapter, target) -> dict:
    """The parameters a dataset run used for the methods it holds; a
    different model, target or parameters is an error, not a silent mix."""
    key = stored.record["key"]
    if key.get("weights") != adapter.weights_digest():
        raise InputError(f"{stored.out} holds maps of another model (weights digest differs); give the model it was run with")
    if key.get("target") != target:
        raise InputError(f"{stored.out} was run with target {key.get('target')!r}, not {target!r}; give the same target")
    found = dict(specs)
    for name, params in specs.items():
        if name in stored.methods:
            used = key["methods"][name]
            differing = sorted(k for k, v in params.items() if used.get(k) != v)
            if differing:
                raise InputError(f"{stored.out} holds {name} maps made with {used}; drop the parameters {differing} "
                                 "or evaluate without maps_from")
            found[name] = dict(used)
    return found


def _stored_maps(stored, name: str, chunk, method):
    """The pair for a method whose maps a dataset run holds: maps and classes
    read by dataset position; explain still runs the method (same parameters)."""
    rows = {row["index"]: row for row in stored.rows}

    def make_maps(inputs):
        positions = [int(i) for i in chunk.positions]
        missing = [i for i in positions if i not in rows or rows[i]["status"] != "ok"]
        if missing:
            raise InputError(f"{stored.out} has no {name} map for dataset item(s) {missing[:5]}: finish the dataset run "
                             "first (rerun its command)")
        maps = np.stack([np.asarray(stored.maps(name)[i], np.float32) for i in positions])
        return maps, np.asarray([rows[i][f"{name}.class"] for i in positions], np.int64)

    return make_maps, _method_maps(method, None)[1]


def _reference_maps(reference, adapter, targets):
    """The same pair for a model-free reference map; the classes are the
    model's (top-1 where the target says so) so that a metric asks about the
    same class as for the methods."""
    from ..targets import resolve_classes

    def make_maps(inputs):
        needs_logits = any(t.kind == "top1" for t in targets)
        logits = adapter.logits(inputs) if needs_logits else np.zeros((len(inputs), 1), np.float32)
        classes = resolve_classes(targets, logits)
        return reference(inputs, classes), classes

    return make_maps, lambda inputs, classes: reference(np.asarray(inputs, np.float32), np.asarray(classes))


def _assemble(collected, names, method_objects, metric_objects, reference_names) -> Evaluation:
    results = {}
    for (label, metric_name), parts in collected.items():
        metric = metric_objects[metric_name]
        scores = np.concatenate([p.scores for p in parts])
        curves = {k: np.concatenate([p.curves[k] for p in parts]) for k in parts[0].curves}
        extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras}
        results[(label, metric_name)] = MetricResult(
            metric=metric_name, method=label, names=list(names), scores=scores, summary=metric.summarize(scores),
            higher_is_better=metric.higher_is_better, curves=curves, curve_x=dict(parts[0].curve_x), extras=extras,
            params=dataclasses.asdict(metric.params))
    return Evaluation(results, list(method_objects), [reference_label(r) for r in reference_names], list(metric_objects))


__all__ = ["Evaluation", "evaluate", "summarize"]
