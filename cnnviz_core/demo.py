"""``cnnviz demo``: every registered method that applies, on scikit-image's
photographs, with the built-in model; one HTML page shows them side by side."""

from __future__ import annotations

import html
import os
import time

import numpy as np
from PIL import Image

from . import api, atomic
from .errors import CnnvizError, InputError
from .registry import get_registry
from .scheduler import Scheduler

SAMPLES = ("chelsea", "coffee")


def sample_images() -> dict[str, Image.Image]:
    try:
        from skimage import data
    except ImportError:
        raise InputError("cnnviz demo needs scikit-image for its sample photographs: pip install 'cnnviz[demo]'") from None
    return {name: Image.fromarray(getattr(data, name)()) for name in SAMPLES}


def run_demo(out: str, model: str = "efficientnet_lite0", device: str = "auto") -> str:
    adapter = api.load_model(model)
    scheduler = Scheduler(device=device)
    adapter.to(scheduler.device_name)
    photos = sample_images()
    inputs, _ = adapter.prepare(list(photos.values()))
    names = list(photos)
    logits = adapter.logits(inputs)
    registry = get_registry()
    rows: dict[str, dict[str, list[str]]] = {name: {} for name in names}
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    for method_name, method_class in registry.methods.items():
        if method_class.kind != "attribution" or api.missing_capabilities(method_class, adapter):
            continue
        started = time.perf_counter()
        try:
            target = method_class.demo_target(adapter, inputs)
            result = api.run(method_name, adapter, inputs, target, scheduler=scheduler, **method_class.demo_params)
        except CnnvizError as error:
            failures[method_name] = str(error)
            continue
        timings[method_name] = time.perf_counter() - started
        result.names = names
        result.save(out)
        for i, name in enumerate(names):
            # gradient methods show the paper's RGB gradient image beside the heatmap overlay
            rows[name][method_name] = [f"{name}.{method_name}.{kind}.png" for kind in result.renderings(i) if kind != "heatmap"]
    for name, photo in zip(names, adapter.display_images(inputs)):
        atomic.write_bytes(os.path.join(out, f"{name}.input.png"), _png(photo))
    index = os.path.join(out, "index.html")
    atomic.write_text(index, _page(adapter, names, logits, rows, timings, failures))
    if failures:
        raise CnnvizError(f"demo: {len(failures)} method(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return index


def _png(image_chw: np.ndarray) -> bytes:
    from . import render

    return render.png_bytes(render.image_to_uint8(image_chw))


def _top5(adapter, row: np.ndarray) -> str:
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    best = np.argsort(-probs)[:5]
    label = (lambda i: adapter.labels[i]) if adapter.labels else str
    return "<br>".join(f"{html.escape(label(int(i)))}: {probs[i]:.3f}" for i in best)


def _page(adapter, names, logits, rows, timings, failures) -> str:
    methods = list(timings)
    head = "".join(f"<th>{html.escape(m)}<br><small>{timings[m]:.2f} s</small></th>" for m in methods)
    body = []
    for i, name in enumerate(names):
        cells = "".join(
            "<td>" + "<br>".join(f"<img src='{html.escape(f)}' width=224>" for f in rows[name][m]) + "</td>" for m in methods
        )
        body.append(
            f"<tr><td><img src='{name}.input.png' width=224><br><b>{html.escape(name)}</b><br>"
            f"<small>{_top5(adapter, logits[i])}</small></td>{cells}</tr>"
        )
    failed = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in failures.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cnnviz demo</title>"
        "<style>body{font-family:sans-serif}td,th{vertical-align:top;padding:4px;text-align:center}</style></head><body>"
        f"<h1>cnnviz demo — {html.escape(adapter.name)}</h1>"
        "<p>Each map explains the top-1 class (listed with its probability under the input). Raw values are in the .npy files beside this page.</p>"
        f"<table><tr><th>input and top-5</th>{head}</tr>{''.join(body)}</table>"
        + (f"<h2>Failed</h2><ul>{failed}</ul>" if failed else "")
        + "</body></html>\n"
    )
