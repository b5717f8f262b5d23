"""The public Python API: load_model, run, methods, models."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import warnings
from typing import Any, Callable, Iterator, Sequence

from .adapter import ModelAdapter
from .errors import CapabilityError, CnnvizError, InputError, MethodWarning, ModelLoadError
from .method import Method
from .registry import get_registry
from .runtime_tuning import tune_allocator, using_threads
from .scheduler import Scheduler
from .targets import parse_targets


def load_model(spec: Any, **options) -> ModelAdapter:
    """Load a model: a registered name (``efficientnet_lite0``), ``timm:NAME``,
    a path to an ``.onnx`` file, or a ``torch.nn.Module``. An adapter passes
    through unchanged. Options go to the adapter (``weights``, ``input_size``,
    ``mean``, ``std``, ``labels``, ``device`` …)."""
    tune_allocator()  # once per process: freed activation buffers stay for the next batch (runtime_tuning)
    if isinstance(spec, ModelAdapter):
        return spec
    registry = get_registry()
    registry.check_name("model", spec)  # a name two plugins register: an error naming both
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
    progress: bool | None = None,
    normalized: bool | None = None,
    threads: int | None = None,
    **params,
):
    """Run a registered method on a model.

    Attribution methods: ``inputs`` are paths, ``skimage:NAME`` samples, PIL
    images, pixel arrays/tensors (uint8, or floats in [0, 1] with
    ``normalized=False``; resized and normalized like files), or a normalized
    (B, 3, H, W) array/tensor (``normalized=True``, or a batch from
    :func:`cnnviz_core.preprocess`; an undeclared float batch is taken as
    normalized, with a warning when it looks like [0, 1] pixels); ``target`` a class index, a label name,
    ``"top1"`` (default), a neuron ``"layer:channel[@y,x]"``, or one per input.

    Synthesis methods: ``inputs`` (for those that start from an image) are
    paths, PIL images, or pixel arrays (a float (B, 3, H, W) array: pixels in
    [0, 1] at the model's size unless ``normalized`` says otherwise); ``target``
    is what to make (one item per target for methods that need no image).
    ``keep_best(index, image, objective, step)`` receives each item's best
    image so far while the run goes.

    Analysis methods: ``inputs`` is the dataset (a folder, a list of paths, or
    an iterable of images or (image, label) pairs); with ``out`` the pass can
    resume after an interruption. See :func:`analyze` for several at once.

    ``params``: the method's parameters (see ``cnnviz run METHOD --help``).
    Everything is checked before any work: capabilities, parameters, targets,
    layer names.

    The model runs on ``device`` (``auto``: the GPU it is already on, else the
    GPU with the most free memory, else the CPU) and is put back where it was
    afterwards, on success or error.

    ``progress=True`` shows a progress bar on stderr for long runs (default:
    off, unless ``CNNVIZ_PROGRESS=1``). ``threads``: compute threads for
    torch and onnxruntime during the run (default: as they are).
    """
    method_class = get_registry().method(method)
    adapter = load_model(model)
    if method_class.kind == "analysis" and target is not None:
        raise InputError(f"{method} analyses a dataset and takes no target")
    if method_class.kind == "analysis" and normalized is not None:
        raise InputError(f"{method} analyses a dataset of images; normalized= applies to image inputs of other methods")
    check_capabilities(method_class, adapter)
    method_params = method_class.make_params(**params)
    with using_threads(threads), placed(adapter, scheduler_for(adapter, device, scheduler, progress)) as chosen:
        instance = method_class(adapter, method_params, chosen)
        if method_class.kind == "analysis":
            from .analysis_pass import run_pass

            return run_pass([instance], inputs, out=out)[0]
        if method_class.kind == "synthesis":
            from .synthesis_inputs import synthesis_items

            pixels, targets, names = synthesis_items(instance, adapter, inputs, target, normalized=normalized)
            return instance.run(pixels, targets, names, keep_best=keep_best)
        batch, names = adapter.prepare(inputs) if normalized is None else adapter.prepare(inputs, normalized=normalized)
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
    progress: bool | None = None,
    workers: int | None = None,
    devices: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run several analyses over ONE streaming pass of ``dataset``: each batch
    is decoded and run through the model once, and the activations are shared.
    ``methods``: names, or a dict name -> parameters. Returns results by name.
    ``workers`` CPU processes (or ``devices="cuda:0,cuda:1"`` / ``"all"``, one
    per GPU) share the pass, each on its own model replica; their partial
    states merge into the result of one process. ``threads``: compute threads
    in this process, or in each worker (default: cores / workers there)."""
    from .analysis_pass import run_pass

    chosen = dict(methods) if isinstance(methods, dict) else {name: {} for name in methods}
    registry = get_registry()
    adapter = load_model(model)
    checked = []
    for name, params in chosen.items():
        method_class = registry.method(name)
        if method_class.kind != "analysis":
            raise InputError(f"{name} is a {method_class.kind} method; only analyses share a dataset pass")
        check_capabilities(method_class, adapter)
        checked.append((method_class, method_class.make_params(**(params or {}))))
    with using_threads(threads), placed(adapter, scheduler_for(adapter, device, scheduler, progress)) as scheduler:
        instances = [method_class(adapter, method_params, scheduler) for method_class, method_params in checked]
        results = run_pass(instances, dataset, out=out, resume=resume, workers=workers, devices=devices)
    return dict(zip(chosen, results))


def scheduler_for(adapter: ModelAdapter, device: str | None = None, scheduler: Scheduler | None = None,
                  progress: bool | None = None) -> Scheduler:
    """The given scheduler, or a new one for ``device`` that keeps the model
    on the GPU it is already on under ``auto``."""
    if scheduler is None:
        return Scheduler(device=device or "auto", prefer=adapter.device, progress=progress)
    if device is not None or progress is not None:
        raise InputError("give either device/progress or scheduler, not both")
    return scheduler


@contextlib.contextmanager
def placed(adapter: ModelAdapter, scheduler: Scheduler) -> Iterator[Scheduler]:
    """The adapter on the scheduler's device for the length of a run, then
    back on the device it was on, on success and on error (a run never leaves
    the user's model moved). Under ``auto``, a model that cannot use the
    chosen device (an ONNX model whose onnxruntime has no CUDA provider) runs
    on the CPU with a MethodWarning; yields the scheduler the run must use."""
    previous = adapter.device
    moving = scheduler.device_name != previous
    try:
        if moving:
            try:
                adapter.to(scheduler.device_name)
            except CnnvizError as error:
                if not scheduler.auto or scheduler.device_name == "cpu":
                    raise
                warnings.warn(f"{adapter.name} cannot run on {scheduler.device_name} ({error}); running on the CPU",
                              MethodWarning, stacklevel=3)
                scheduler = scheduler.on_cpu()
                adapter.to("cpu")
        if scheduler.device.is_cuda:  # out of memory at a batch of 1 under auto: on to the CPU, put back below
            scheduler.cpu_fallback = lambda: adapter.to("cpu")
        yield scheduler
    finally:
        if moving or adapter.device != previous:
            adapter.to(previous)


def _instance(method_class: type[Method], adapter: ModelAdapter, params: dict, device, scheduler) -> Method:
    """A checked method instance with the adapter moved to its device (for
    callers that own the model, like the CLI; :func:`run` restores placement)."""
    check_capabilities(method_class, adapter)
    method_params = method_class.make_params(**params)
    scheduler = scheduler_for(adapter, device, scheduler)
    adapter.to(scheduler.device_name)
    if scheduler.device.is_cuda:  # the caller's own model: out of memory at a batch of 1 under auto moves it to the CPU
        scheduler.cpu_fallback = lambda: adapter.to("cpu")
    return method_class(adapter, method_params, scheduler)
