"""``cnnviz demo``: every registered method, on scikit-image's photographs,
with the built-in model or its ONNX copy (the methods that need no gradients
run on the ONNX copy); one HTML page (``index.html``) shows the results with a
line on how to read each.

Attribution methods explain the top-1 class of two photographs; synthesis
methods make their images (from the first photograph where they need one);
analyses stream one dataset: random crops of scikit-image's photographs,
labelled by the photograph they come from (``dataset/PHOTO/…``).

The quick attribution methods run first and the page is rewritten (atomically)
after every method, so the first pictures are there within seconds; it
reloads itself until the demo is done. Last, a leaderboard scores some of the
attribution methods with cnnviz_core.evaluate (see EVALUATION_METHODS); it is
shown as an HTML table with the curves. Each method runs with its class's
``demo_params`` and, where it has one, its ``demo_settings(adapter)`` (settings
that depend on the model, such as a layer)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import types
import warnings
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import api, atomic, demo_text, images as imaging
from .errors import CnnvizError, InputError
from .progress import progress_default
from .registry import get_registry
from .scheduler import Scheduler

SAMPLES = ("chelsea", "coffee")
# The analyses' dataset: crops of every colour or grey photograph scikit-image bundles.
DATASET_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "colorwheel", "retina", "camera", "coins", "moon", "page", "text", "logo")
CROPS_PER_PHOTO = 16  # 14 photos x 16 = 224 crops: enough for t-SNE clusters, seconds to stream
CROP_SIDE = 224  # pixels of each crop as written (the model's input size)
CROP_FRACTION = (0.3, 0.65)  # a crop's side, as a fraction of its photo's shorter side
# Analyses that run the model several times per image take every Nth crop,
# unlabelled: pruning runs it once per sparsity (and the crops' labels, their
# photographs, are no classes of the model, so only agreement is measured).
DATASET_EVERY = {"pruning": 4}
KINDS = ("attribution", "synthesis", "analysis")
RUNTIMES = {"torch": "PyTorch", "onnx": "ONNX Runtime"}

# Seconds each method takes in the demo on a 2-core CPU (measured with the
# demo's settings on a busy machine, scaled by 0.75 for an idle one): the plan
# runs quick methods first, and the overall estimate scales these by the speed
# observed so far. Unknown methods: DEFAULT_COST.
DEMO_COST = {
    "gradcam": 1.0, "gradcam_plus_plus": 0.5, "guided_gradcam": 0.5, "layercam": 0.5, "neuron_gradient": 0.5,
    "smoothgrad": 1.5, "guided_backprop": 2.0, "saliency": 2.0, "deconvnet": 4.0, "integrated_gradients": 12.0,
    "cam": 0.5, "occlusion": 11.0, "score_cam": 7.0, "rise": 14.0,
    "adversarial": 4.5, "deepdream": 17.0, "inversion": 24.0, "fooling_images": 32.0, "style_transfer": 38.0,
    "class_model": 44.0,
    "filters": 0.2, "top_patches": 5.0, "pruning": 7.0, "tsne": 9.0,
    "evaluation": 17.0,  # the leaderboard (see EVALUATION_*), after every method
}
DEFAULT_COST = 5.0
EXPORT_COST = 6.0  # the ONNX export, before the first ONNX run
# The leaderboard ("which explanation to trust"): cnnviz_core.evaluate on the
# photographs for the methods the demo ran among these, on the model they ran
# on: the ONNX copy, whose forward passes (what the metrics spend their time
# on) cost 2.5x less than eager PyTorch's here, which leaves out the gradient
# methods. Settings chosen for cost: occlusion's coarse window needs 49
# forward passes a photo; deletion and insertion take 24 steps of 1/24 of the
# pixels (the paper: 224; the curves keep their shape); sparseness and
# complexity read the maps only. (RISE with the 128 masks this budget allows
# scored like a random map: too few masks to show the method at its best.)
EVALUATION_METHODS = {"cam": {}, "occlusion": {"window": 56, "stride": 28}}
EVALUATION_METRICS = {"deletion": {"steps": 24}, "insertion": {"steps": 24}, "sparseness": {}, "complexity": {}}
EVALUATION_REFERENCES = ("random", "sobel")  # a uniform map's pixel order is only reading order: left out
PRIOR_SECONDS = 30.0  # weight of the measured costs against the speed observed, in the estimate


@dataclasses.dataclass
class Picture:
    path: str  # relative to the page
    caption: str


@dataclasses.dataclass
class DemoRun:
    """One method on one model: its pictures (rows of captioned files), facts,
    the warnings it gave, and how long it took."""

    method: str
    kind: str
    model: str  # "torch" or "onnx"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rows: dict[str, list[Picture]] = dataclasses.field(default_factory=dict)  # row title -> pictures
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def sample_images(names=SAMPLES) -> dict[str, Image.Image]:
    try:
        from skimage import data
    except ImportError:
        raise InputError("cnnviz demo needs scikit-image for its sample photographs: pip install 'cnnviz[demo]'") from None
    return {name: imaging.to_rgb(Image.fromarray(_uint8(getattr(data, name)()))) for name in names}


def _uint8(array: np.ndarray) -> np.ndarray:
    return (array * 255).astype(np.uint8) if array.dtype == bool else array


def demo_plan(adapters: dict[str, Any], only: list[str] | None = None) -> list[tuple[str, str]]:
    """(method, model label) for every registered method, each once: on the
    last model it runs on (the ONNX copy when the method needs no gradients:
    that is what shows it working on a model that cannot be differentiated,
    and it is the faster runtime), in the order the demo runs them: by kind
    (attribution first), then by model, quick methods first."""
    registry = get_registry()
    unknown = sorted(set(only or ()) - set(registry.methods))
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; see `cnnviz methods`")
    plan = []
    for name, method_class in registry.methods.items():
        if method_class.kind == "metric":
            continue  # metrics score methods (cnnviz evaluate); they make no pictures of their own
        if method_class.explains == "detection":
            continue  # explains a detector's objects; the demo's model is a classifier
        runs_on = [label for label, adapter in adapters.items()
                   if not api.missing_capabilities(method_class, adapter) and not method_class.unsupported(adapter)]
        if (only is None or name in only) and runs_on:
            plan.append((name, runs_on[-1]))
    labels = list(adapters)

    def order(entry):
        name, label = entry
        kind = registry.method(name).kind
        return (KINDS.index(kind) if kind in KINDS else len(KINDS), labels.index(label), DEMO_COST.get(name, DEFAULT_COST), name)

    return sorted(plan, key=order)


class DemoProgress:
    """"method k of N" lines on stderr with the runtime and one overall
    estimate: the measured costs of the runs left, scaled by the speed
    observed so far. In a terminal the running method shows on a live line."""

    def __init__(self, plan: list[tuple[str, str]], enabled: bool, stream=None, after: float = 0.0):
        self.plan, self.enabled = plan, enabled
        self.stream = stream or sys.stderr
        self.costs = [DEMO_COST.get(name, DEFAULT_COST) for name, _ in plan]
        self.after = after  # measured seconds of the work after the methods (the leaderboard)
        self.start = time.perf_counter()
        self.done_cost = 0.0
        self.live = enabled and _is_terminal(self.stream)

    def estimate(self, position: int) -> float:
        """Seconds left after ``position`` runs are done: the measured costs
        left, times the speed seen so far, which starts from the measured
        speed (PRIOR_SECONDS of it) so a slow first method (warming up) does
        not swing the estimate."""
        spent = time.perf_counter() - self.start
        speed = min(max((spent + PRIOR_SECONDS) / (self.done_cost + PRIOR_SECONDS), 0.25), 8.0)
        return (sum(self.costs[position:]) + self.after) * speed

    def say(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
            self.stream.flush()

    def starting(self, position: int) -> None:
        if self.live:
            name, label = self.plan[position]
            self.stream.write(f"\r\033[Kmethod {position + 1} of {len(self.plan)}: {name} on {RUNTIMES.get(label, label)} ...")
            self.stream.flush()

    def finished(self, position: int, run: DemoRun) -> None:
        self.done_cost += self.costs[position]
        outcome = f"failed: {run.error}" if run.error else f"{run.seconds:.1f} s"
        left = self.estimate(position + 1)
        tail = f"; about {_duration(left)} left" if position + 1 < len(self.plan) or self.after else ""
        self.say(f"method {position + 1} of {len(self.plan)}: {run.method} on {RUNTIMES.get(run.model, run.model)}, {outcome}{tail}")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def run_demo(out: str, model: str = "efficientnet_lite0", device: str = "auto", only: list[str] | None = None,
             onnx: bool = True, progress: bool | None = None) -> str:
    """Run the demo into ``out``; returns the page's path. The page is
    rewritten after every method; failures are listed on it and raised at
    the end as one CnnvizError."""
    from .demo_page import demo_page

    show = progress_default(progress)
    called = time.perf_counter()
    first_result: float | None = None  # seconds from the call to the first method's pictures on the page
    # the per-method bars would name internal steps: the demo reports per method instead
    scheduler = Scheduler(device=device, progress=False)
    adapter = api.load_model(model)
    adapter.to(scheduler.device_name)
    planned: dict[str, Any] = {"torch": adapter}
    if onnx and adapter.kind != "onnx":
        from cnnviz_adapters.onnx_adapter import OnnxAdapter

        planned["onnx"] = types.SimpleNamespace(capabilities=OnnxAdapter.capabilities)  # exported when first needed
    plan = demo_plan(planned, only)
    adapters: dict[str, Any] = {"torch": adapter}
    photos = sample_images()
    names = list(photos)
    inputs, _ = adapter.prepare(list(photos.values()))
    os.makedirs(out, exist_ok=True)
    for name, photo in zip(names, adapter.display_images(inputs)):
        atomic.write_bytes(os.path.join(out, f"{name}.input.png"), _png(photo))
    logits = adapter.logits(inputs)
    index = os.path.join(out, "index.html")
    runs: list[DemoRun] = []
    scored_on, scored = evaluation_methods(plan)
    board: list[Any] = []  # the leaderboard, once made

    def write_page(done: bool) -> None:
        pending = [] if done else plan[len(runs):] + ([("evaluation", scored_on)] if scored else [])
        atomic.write_text(index, demo_page(adapter, names, logits, runs, pending, done, board[0] if board else None))

    reporter = DemoProgress(plan, show, after=DEMO_COST["evaluation"] if scored else 0.0)
    reporter.say(f"cnnviz demo: {len(plan)} runs ({len({m for m, _ in plan})} methods) on {adapter.name}; about "
                 f"{_duration(sum(reporter.costs) + reporter.after + (EXPORT_COST if 'onnx' in planned else 0))} on an idle 2-core CPU. "
                 f"The page fills in as methods finish: {index}")
    write_page(False)
    dataset = None
    for position, (method_name, label) in enumerate(plan):
        reporter.starting(position)
        if label not in adapters:
            adapters[label] = _export(adapter, out, reporter)
        if dataset is None and get_registry().method(method_name).kind == "analysis":
            dataset = _write_dataset(os.path.join(out, "dataset"))
        run = DemoRun(method_name, get_registry().method(method_name).kind, label)
        started, cpu_started = time.perf_counter(), time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _run_one(run, adapters[label], scheduler, inputs, names, os.path.join(out, "dataset"), out)
            except CnnvizError as error:
                run.error = str(error)
        run.notes = list(dict.fromkeys(str(w.message) for w in caught))
        run.seconds, run.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        runs.append(run)
        reporter.finished(position, run)
        write_page(position + 1 == len(plan) and not scored)
        if first_result is None and not run.error:
            first_result = time.perf_counter() - called
    evaluation_seconds = None
    if scored:
        started = time.perf_counter()
        board.append(_leaderboard(adapters[scored_on], scored, list(photos.values()), os.path.join(out, "evaluation"), device))
        evaluation_seconds = board[0].seconds = time.perf_counter() - started
        reporter.say(f"evaluation of {', '.join(scored)} by {', '.join(EVALUATION_METRICS)}: "
                     + (f"failed: {board[0].error}" if board[0].error else f"{evaluation_seconds:.1f} s"))
    if scored or not plan:
        write_page(True)
    atomic.write_json(os.path.join(out, "timings.json"), {
        "runs": [{"method": r.method, "model": r.model, "seconds": round(r.seconds, 3), "cpu_seconds": round(r.cpu_seconds, 3)}
                 for r in runs],
        "evaluation_seconds": None if evaluation_seconds is None else round(evaluation_seconds, 3),
        "total_seconds": round(time.perf_counter() - called, 3), "cpu_seconds": round(time.process_time(), 3),
        "first_result_seconds": None if first_result is None else round(first_result, 3), "cpu_count": os.cpu_count()})
    reporter.say(f"cnnviz demo: done in {_duration(time.perf_counter() - called)}")
    failed = [f"{r.method} ({r.model}): {r.error}" for r in runs if r.error]
    failed += [f"evaluation: {b.error}" for b in board if b.error]
    if failed:
        raise CnnvizError(f"demo: {len(failed)} run(s) failed: " + "; ".join(failed))
    return index


@dataclasses.dataclass
class Leaderboard:
    """The demo's evaluation: the :class:`~cnnviz_core.evaluation.Evaluation`
    (None if it failed), its curve plots relative to the page, and its cost."""

    evaluation: Any
    curves: dict[str, str] = dataclasses.field(default_factory=dict)  # metric -> picture path
    folder: str = "evaluation"
    settings: str = ""  # the methods' and metrics' parameters, as the page states them
    seconds: float = 0.0
    error: str | None = None


def evaluation_methods(plan: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(model label, methods) of the leaderboard: those of EVALUATION_METHODS
    the demo runs on its last model (the ONNX copy when there is one), so the
    leaderboard needs no model the demo did not load."""
    planned = {name: label for name, label in plan if name in EVALUATION_METHODS}
    if not planned:
        return "torch", []
    label = "onnx" if "onnx" in planned.values() else "torch"
    return label, [name for name in EVALUATION_METHODS if planned.get(name) == label]


def _leaderboard(adapter, methods: list[str], photos: list, folder: str, device: str) -> Leaderboard:
    """cnnviz_core.evaluate on the photographs with the model the methods ran
    on. Written to ``folder``; a rerun of the demo recomputes it, as it does
    every method."""
    from .evaluation import evaluate

    try:
        evaluation = evaluate(adapter, {name: EVALUATION_METHODS[name] for name in methods}, EVALUATION_METRICS, photos,
                              out=folder, references=list(EVALUATION_REFERENCES), batch_size=len(photos),
                              device=device, resume=False, progress=False)
    except CnnvizError as error:
        return Leaderboard(None, error=str(error))
    name = os.path.basename(folder)
    curves = {metric: f"{name}/curves.{metric}.png" for metric in EVALUATION_METRICS
              if os.path.isfile(os.path.join(folder, f"curves.{metric}.png"))}
    chosen = {**{m: EVALUATION_METHODS[m] for m in methods}, **EVALUATION_METRICS}
    settings = "; ".join(f"{n} " + ", ".join(f"{k} {v}" for k, v in p.items()) for n, p in chosen.items() if p)
    model = "the ONNX copy" if adapter.kind == "onnx" else "PyTorch"
    return Leaderboard(evaluation, curves, name, f"On {model}, for speed: {settings} (each method's own defaults otherwise).")


def _export(adapter, out: str, reporter: DemoProgress):
    from cnnviz_adapters.onnx_export import export_onnx

    reporter.say("exporting the model to ONNX for the methods that run on it ...")
    path = export_onnx(adapter, os.path.join(out, f"{adapter.name.replace(':', '_')}.onnx"))
    return api.load_model(path)


def demo_params(method_class, adapter) -> dict[str, Any]:
    """The method's demo settings for this model: its ``demo_params``, then
    what its optional classmethod ``demo_settings(adapter)`` returns (settings
    that depend on the model, such as a layer)."""
    settings = getattr(method_class, "demo_settings", None)
    return {**method_class.demo_params, **(settings(adapter) if settings is not None else {})}


def _run_one(run: DemoRun, adapter, scheduler, inputs, names, dataset, out) -> None:
    method_class = get_registry().method(run.method)
    folder = os.path.join(out, run.model)
    params = demo_params(method_class, adapter)
    page_path: Callable[[str], str] = lambda path: f"{run.model}/{os.path.basename(path)}"  # noqa: E731 - relative to the page
    if run.kind == "attribution":
        target = method_class.demo_target(adapter, inputs)
        result = api.run(run.method, adapter, inputs, target, scheduler=scheduler, **params)
        result.names = names
        written = result.save(folder, overwrite=True)  # the demo rebuilds its folder: a rerun replaces the last one
        for i, name in enumerate(names):
            row = [Picture(page_path(_rendering(written, name, run.method, kind)), caption)
                   for kind, caption in (("overlay", "over the photo"), ("heatmap", "values"), ("gradient", "gradient image"))
                   if kind in result.renderings(i)]
            unit = _unit_pictures(adapter, result, i, folder)
            if unit:  # a unit's gradient is shown where the unit looks, as Zeiler & Fergus show theirs
                row = [Picture(page_path(p), c) for p, c in unit] + row[2:]
            run.rows[f"{name}: {'explains' if result.classes[i] >= 0 else 'unit'} {result.label(i)}"] = row
        # what the method reports per image (integrated gradients: its completeness error)
        run.facts = {k: v for k, v in result.metadata.items() if isinstance(v, (int, float, str))
                     or (isinstance(v, list) and len(v) <= len(names) and all(isinstance(x, (int, float)) for x in v))}
    elif run.kind == "synthesis":
        start = imaging.denormalize(inputs[:1], adapter.config) if method_class.needs_image else None
        target = method_class.demo_target(adapter, None if start is None else inputs[:1])
        if target is None and start is None:  # a method that makes images of classes: the first photo's class
            target = [int(np.argmax(adapter.logits(inputs[:1])))]
        result = api.run(run.method, adapter, start, target, scheduler=scheduler, **params)
        if start is not None:
            result.names = names[:1]
        written = result.save(folder, overwrite=True)
        for i, name in enumerate(result.names):
            keys = list(result.renderings(i))
            # the starting picture first, then the result, then the rest
            keys.sort(key=lambda k: {"input": 0, "content": 0, "style": 1, "image": 2}.get(k, 3))
            run.rows[name] = [Picture(page_path(_synthesis_file(written, name, run.method, key, keys)),
                                      demo_text.synthesis_caption(result, i, key)) for key in keys]
        history = [f for f in written if f.endswith(".history.png")]
        if history and run.rows:  # the chart beside the last item's pictures
            run.rows[list(run.rows)[-1]].append(Picture(page_path(history[0]), "the objective at each step"))
    else:
        every = DATASET_EVERY.get(run.method)
        if every:
            dataset = sorted(os.path.join(root, f) for root, _, files in os.walk(dataset) for f in files)[::every]
        result = api.run(run.method, adapter, dataset, scheduler=scheduler, **params)
        written = result.save(folder, overwrite=True)
        keys = sorted(result.pictures, key=lambda k: (k != "overview", k))[:3]  # an overview first, two more
        run.rows[""] = [Picture(page_path(_analysis_file(written, run.method, key)),
                                demo_text.analysis_caption(run.method, key, result.facts)) for key in keys]
        run.facts = dict(result.facts)


def _rendering(written: list[str], name: str, method: str, kind: str) -> str:
    return next(f for f in written if os.path.basename(f).startswith(f"{name}.{method}.") and f.endswith(f".{kind}.png"))


def _synthesis_file(written: list[str], name: str, method: str, key: str, keys: list[str]) -> str:
    """An item's picture among the written files: ``{stem}.{key}.png``, the
    result itself ``{stem}.png``."""
    mine = [f for f in written if os.path.basename(f).startswith(f"{name}.{method}") and f.endswith(".png")
            and not f.endswith(".history.png")]
    if key != "image":
        return next(f for f in mine if f.endswith(f".{key}.png"))
    return next(f for f in mine if not any(f.endswith(f".{k}.png") for k in keys if k != "image"))


def _analysis_file(written: list[str], method: str, key: str) -> str:
    return next(f for f in written if os.path.basename(f) == f"{method}.{key}.png")


UNIT_ZOOM = 160  # pixels of the enlarged receptive-field crops


def _unit_pictures(adapter, result, index: int, folder: str) -> list[tuple[str, str]]:
    """For a target that is one unit (layer:channel@y,x) of a gradient
    method: the unit's receptive field in the photo and the gradient image
    cropped to it, both enlarged; written beside the result's files."""
    from . import render

    target = result.targets[index] if index < len(result.targets) else None
    if result.images is None or target is None or target.kind != "neuron" or target.position is None:
        return []
    box = adapter.receptive_field(target.layer).boxes(np.array(target.position[0]), np.array(target.position[1]))
    y0, y1, x0, x1 = (int(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        return []

    def enlarged(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(rgb).resize((UNIT_ZOOM, UNIT_ZOOM), Image.Resampling.NEAREST))

    stem = os.path.join(folder, f"{result.names[index]}.{result.method}.unit")
    patch = enlarged(render.image_to_uint8(result.display[index][:, y0:y1, x0:x1]))
    reconstruction = enlarged(render.gradient_image(result.images[index][:, y0:y1, x0:x1]))
    atomic.write_bytes(f"{stem}_field.png", render.png_bytes(patch))
    atomic.write_bytes(f"{stem}_gradient.png", render.png_bytes(reconstruction))
    where = f"{target.layer} channel {target.channel} at {target.position[0]},{target.position[1]}"
    return [(f"{stem}_field.png", f"receptive field of {where} ({y1 - y0}x{x1 - x0} px)"),
            (f"{stem}_gradient.png", "its reconstruction")]


def _crop_boxes(size: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    width, height = size
    boxes = []
    for _ in range(CROPS_PER_PHOTO):
        side = int(min(width, height) * rng.uniform(*CROP_FRACTION))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        boxes.append((left, top, left + side, top + side))
    return boxes


def _write_dataset(folder: str) -> list[str]:
    """Random square crops of each photograph in ``folder/PHOTO/`` (a class
    folder per photograph: the crops' label), resized to CROP_SIDE. The same
    crops every time; files already there are kept (each is written
    atomically, so an existing file is a whole one)."""
    rng = np.random.default_rng(0)
    paths = []
    for name, image in sample_images(DATASET_SAMPLES).items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for k, box in enumerate(_crop_boxes(image.size, rng)):
            path = os.path.join(folder, name, f"{name}_{k:02d}.jpg")
            if not os.path.exists(path):
                crop = image.crop(box).resize((CROP_SIDE, CROP_SIDE), Image.Resampling.BILINEAR)
                with atomic.atomic_open(path, "wb") as stream:
                    crop.save(stream, format="JPEG", quality=92)  # a tenth of a PNG's size
            paths.append(path)
    return paths


def _png(image_chw: np.ndarray) -> bytes:
    from . import render

    return render.png_bytes(render.image_to_uint8(image_chw))
