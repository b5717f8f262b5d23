"""The public Python API: load_model, run, methods, models."""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable, Sequence

from .adapter import ModelAdapter
from .errors import CapabilityError, InputError, ModelLoadError
from .method import Method
from .registry import get_registry
from .scheduler import Scheduler
from .targets import parse_targets


def load_model(spec: Any, **options) -> ModelAdapter:
    """Load a model: a registered name (``efficientnet_lite0``), ``timm:NAME``,
    a path to an ``.onnx`` file, or a ``torch.nn.Module``. An adapter passes
    through unchanged. Options go to the adapter (``weights``, ``input_size``,
    ``mean``, ``std``, ``labels``, ``device`` …)."""
    if isinstance(spec, ModelAdapter):
        return spec
    registry = get_registry()
    if isinstance(spec, str) and spec in registry.models:
        return registry.models[spec].factory(**options)
    for adapter_class in registry.adapters:
        if adapter_class.can_load(spec):
            return adapter_class.load(spec, **options)
    if isinstance(spec, (str, os.PathLike)) and not os.path.exists(spec) and os.path.splitext(str(spec))[1]:
        raise ModelLoadError(f"model file {spec} does not exist")
    known = ", ".join(registry.models) or "none"
    raise ModelLoadError(
        f"cannot load model {spec!r}: give a registered name ({known}), timm:NAME, a path to an .onnx file, "
        "or a torch.nn.Module"
    )


def methods(model: Any = None, kind: str | None = None) -> list[str]:
    """Registered method names; with ``model``, only those that run on it."""
    registry = get_registry()
    names = [n for n, cls in registry.methods.items() if kind is None or cls.kind == kind]
    if model is None:
        return names
    adapter = load_model(model)
    return [n for n in names if not missing_capabilities(registry.methods[n], adapter)]


def models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard."""
    return [n for n in get_registry().models if fnmatch.fnmatch(n, pattern)]


def missing_capabilities(method_class: type[Method], adapter: ModelAdapter) -> set:
    return set(method_class.requires) - set(adapter.capabilities)


def check_capabilities(method_class: type[Method], adapter: ModelAdapter) -> None:
    missing = missing_capabilities(method_class, adapter)
    if missing:
        working = [n for n, c in get_registry().methods.items() if not missing_capabilities(c, adapter)]
        raise CapabilityError(method_class.name, adapter.name, {str(m) for m in missing}, working)


def run(
    method: str,
    model: Any,
    inputs: Any = None,
    target: Any = None,
    *,
    device: str | None = None,
    scheduler: Scheduler | None = None,
    on_batch: Callable | None = None,
    keep_best: Callable | None = None,
    out: str | os.PathLike | None = None,
    **params,
):
    """Run a registered method on a model.

    Attribution methods: ``inputs`` are paths, PIL images, or a preprocessed
    (B, 3, H, W) array/tensor; ``target`` a class index, a label name,
    ``"top1"`` (default), a neuron ``"layer:channel[@y,x]"``, or one per input.

    Synthesis methods: ``inputs`` (for those that start from an image) are
    paths, PIL images, or a (B, 3, H, W) array of pixels in [0, 1]; ``target``
    is what to make (one item per target for methods that need no image).
    ``keep_best(index, image, objective, step)`` receives each item's best
    image so far while the run goes.

    Analysis methods: ``inputs`` is the dataset (a folder, a list of paths, or
    an iterable of images or (image, label) pairs); with ``out`` the pass can
    resume after an interruption. See :func:`analyze` for several at once.

    ``params``: the method's parameters (see ``cnnviz run METHOD --help``).
    Everything is checked before any work: capabilities, parameters, targets,
    layer names.
    """
    method_class = get_registry().method(method)
    adapter = load_model(model)
    instance = _instance(method_class, adapter, params, device, scheduler)
    if method_class.kind == "analysis":
        if target is not None:
            raise InputError(f"{method} analyses a dataset and takes no target")
        from .analysis_pass import run_pass

        return run_pass([instance], inputs, out=out)[0]
    if method_class.kind == "synthesis":
        from .synthesis_inputs import synthesis_items

        pixels, targets, names = synthesis_items(instance, adapter, inputs, target)
        return instance.run(pixels, targets, names, keep_best=keep_best)
    batch, names = adapter.prepare(inputs)
    targets = parse_targets(target, len(batch), adapter.num_classes, adapter.labels)
    return instance.run(batch, targets, names=names, on_batch=on_batch)


def analyze(
    methods: Sequence[str] | dict[str, dict[str, Any]],
    model: Any,
    dataset: Any = None,
    *,
    device: str | None = None,
    scheduler: Scheduler | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run several analyses over ONE streaming pass of ``dataset``: each batch
    is decoded and run through the model once, and the activations are shared.
    ``methods``: names, or a dict name -> parameters. Returns results by name."""
    from .analysis_pass import run_pass

    chosen = dict(methods) if isinstance(methods, dict) else {name: {} for name in methods}
    registry = get_registry()
    adapter = load_model(model)
    if scheduler is None:
        scheduler = Scheduler(device=device or "auto")
    instances = []
    for name, params in chosen.items():
        method_class = registry.method(name)
        if method_class.kind != "analysis":
            raise InputError(f"{name} is a {method_class.kind} method; only analyses share a dataset pass")
        instances.append(_instance(method_class, adapter, params or {}, None, scheduler))
    results = run_pass(instances, dataset, out=out, resume=resume)
    return dict(zip(chosen, results))


def _instance(method_class: type[Method], adapter: ModelAdapter, params: dict, device, scheduler) -> Method:
    check_capabilities(method_class, adapter)
    method_params = method_class.make_params(**params)
    if scheduler is None:
        scheduler = Scheduler(device=device or "auto")
    elif device is not None:
        raise InputError("give either device or scheduler, not both")
    adapter.to(scheduler.device_name)
    return method_class(adapter, method_params, scheduler)
