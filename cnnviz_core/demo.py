"""``cnnviz demo``: every registered method that applies, on scikit-image's
photographs, with the built-in model and with its ONNX copy; one HTML page
shows the results side by side.

Attribution methods explain the top-1 class of two photographs; synthesis
methods make their images (from the first photograph where they need one);
analyses run over one streaming pass of a dozen photographs."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
from PIL import Image

from . import api, atomic, images as imaging
from .errors import CnnvizError, InputError
from .registry import get_registry
from .scheduler import Scheduler

SAMPLES = ("chelsea", "coffee")
# The analyses' dataset: every colour or grey photograph scikit-image bundles.
DATASET_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "colorwheel", "retina", "camera", "coins", "moon", "page", "text", "logo")


@dataclasses.dataclass
class DemoRun:
    """One method on one model: where its files went and what it showed."""

    method: str
    kind: str
    model: str
    seconds: float = 0.0
    files: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # row name -> image files
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
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
    """(method, model label) for every registered method that runs on each model."""
    registry = get_registry()
    unknown = sorted(set(only or ()) - set(registry.methods))
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; see `cnnviz methods`")
    plan = []
    for label, adapter in adapters.items():
        for name, method_class in registry.methods.items():
            if (only is None or name in only) and not api.missing_capabilities(method_class, adapter):
                plan.append((name, label))
    return plan


def run_demo(out: str, model: str = "efficientnet_lite0", device: str = "auto", only: list[str] | None = None,
             onnx: bool = True, progress: bool | None = None) -> str:
    scheduler = Scheduler(device=device, progress=progress)
    adapter = api.load_model(model)
    adapter.to(scheduler.device_name)
    adapters = {"torch": adapter}
    if onnx and adapter.kind != "onnx":
        from cnnviz_adapters.onnx_export import export_onnx

        os.makedirs(out, exist_ok=True)
        path = export_onnx(adapter, os.path.join(out, f"{adapter.name.replace(':', '_')}.onnx"))
        adapters["onnx"] = api.load_model(path)
    plan = demo_plan(adapters, only)
    photos = sample_images()
    names = list(photos)
    inputs, _ = adapter.prepare(list(photos.values()))
    dataset = _write_dataset(os.path.join(out, "dataset")) if any(
        get_registry().method(m).kind == "analysis" for m, _ in plan) else None
    runs = []
    for method_name, label in plan:
        folder = os.path.join(out, label)
        started = time.perf_counter()
        run = DemoRun(method_name, get_registry().method(method_name).kind, label)
        try:
            _run_one(run, adapters[label], scheduler, inputs, names, dataset, folder)
        except CnnvizError as error:
            run.error = str(error)
        run.seconds = time.perf_counter() - started
        runs.append(run)
    for name, photo in zip(names, adapter.display_images(inputs)):
        atomic.write_bytes(os.path.join(out, f"{name}.input.png"), _png(photo))
    index = os.path.join(out, "index.html")
    from .demo_page import demo_page

    atomic.write_text(index, demo_page(adapter, names, adapter.logits(inputs), runs))
    failed = [r for r in runs if r.error]
    if failed:
        raise CnnvizError(f"demo: {len(failed)} run(s) failed: " + "; ".join(f"{r.method} ({r.model}): {r.error}" for r in failed))
    return index


def _run_one(run: DemoRun, adapter, scheduler, inputs, names, dataset, folder) -> None:
    method_class = get_registry().method(run.method)
    relative = lambda path: os.path.join(run.model, os.path.basename(path))  # noqa: E731 - page links are relative to out
    if run.kind == "attribution":
        target = method_class.demo_target(adapter, inputs)
        result = api.run(run.method, adapter, inputs, target, scheduler=scheduler, **method_class.demo_params)
        result.names = names
        result.save(folder)
        for i, name in enumerate(names):
            # gradient methods show the paper's RGB gradient image beside the heatmap overlay
            run.files[name] = [relative(f"{name}.{run.method}.{kind}.png") for kind in result.renderings(i) if kind != "heatmap"]
    elif run.kind == "synthesis":
        start = imaging.denormalize(inputs[:1], adapter.config) if method_class.needs_image else None
        target = method_class.demo_target(adapter, None if start is None else inputs[:1])
        if target is None and start is None:  # a method that makes images of classes: the first photo's class
            target = [int(np.argmax(adapter.logits(inputs[:1])))]
        result = api.run(run.method, adapter, start, target, scheduler=scheduler, **method_class.demo_params)
        if start is not None:
            result.names = names[:1]
        written = result.save(folder)
        for i, name in enumerate(result.names):
            run.files[name] = [relative(f) for f in written if os.path.basename(f).startswith(f"{name}.{run.method}") and f.endswith(".png")]
            run.facts[name] = result.label(i)
        history = [relative(f) for f in written if f.endswith(".history.png")]
        if history:
            run.files["history"] = history
    else:
        result = api.run(run.method, adapter, dataset, scheduler=scheduler, **method_class.demo_params)
        written = result.save(folder)
        run.files["pictures"] = [relative(f) for f in written if f.endswith(".png")][:8]
        run.facts = {k: v for k, v in result.facts.items() if isinstance(v, (int, float, str, bool))}


def _write_dataset(folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, image in sample_images(DATASET_SAMPLES).items():
        path = os.path.join(folder, f"{name}.png")
        if not os.path.exists(path):  # written atomically, so an existing file is a whole one
            with atomic.atomic_open(path, "wb") as stream:
                image.save(stream, format="PNG")
        paths.append(path)
    return paths


def _png(image_chw: np.ndarray) -> bytes:
    from . import render

    return render.png_bytes(render.image_to_uint8(image_chw))
