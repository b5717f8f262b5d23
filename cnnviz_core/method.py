"""Method base classes. The base owns the pipeline (parameters, batching through
the scheduler, target resolution, result assembly); a method overrides one step.

A method is one class with:
- ``name``: its registry name; ``kind``: attribution, synthesis or analysis;
- ``requires``: the capabilities it needs from the model adapter;
- ``Params``: a dataclass of typed parameters with defaults and ``help``
  metadata (made with :func:`param`), from which the CLI's flags are generated.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any, Callable, ClassVar

import numpy as np

from .capabilities import Capability
from .errors import InputError, MethodError
from .param_values import check_value
from .results import AttributionResult
from .scheduler import Scheduler
from .targets import Target, validate_targets

KINDS = ("attribution", "synthesis", "analysis", "metric")  # metric: cnnviz_core.metric.Metric, run by cnnviz evaluate
# Flags and argparse destinations every `cnnviz run` has, and keyword
# arguments of cnnviz_core.run; a method parameter may not take these names.
RESERVED_PARAMS = frozenset({"model", "image", "target", "device", "out", "weights", "quiet", "method", "dataset",
                             "resume", "help", "command", "param_names", "progress", "inputs", "scheduler",
                             "on_batch", "keep_best", "overwrite",
                             "normalized", "mean", "std", "input_size", "interpolation"})


def param(default: Any, help: str, choices: tuple | None = None, minimum: float | None = None,
          allow_nonfinite: bool = False, python_types: tuple[type, ...] = ()):
    """A method parameter: its default, its help text, and optional checks.

    Values are checked against the field's type (see :mod:`cnnviz_core.param_values`);
    a float must be finite unless ``allow_nonfinite`` (for a parameter where
    ``inf`` means something, such as "no limit"). ``python_types``: further
    types a Python caller may pass (a PIL image or an array for a parameter the
    CLI takes as a file name), handed to the method's ``check_params`` as they are."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum,
                                                        "allow_nonfinite": allow_nonfinite,
                                                        "python_types": tuple(python_types)})


@dataclasses.dataclass
class MethodParams:
    """Parameters every method has."""

    batch_size: int | None = param(None, "inputs per batch (default: the method's own hint); halved on out-of-memory", minimum=1)


@dataclasses.dataclass
class AttributionParams(MethodParams):
    score: str = param("logit", "the score explained: the target's logit or its softmax probability", choices=("logit", "prob"))


def param_fields(params_class) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(params_class) if f.init]


def param_types(params_class) -> dict[str, Any]:
    return typing.get_type_hints(params_class)


@dataclasses.dataclass
class Attribution:
    """What ``attribute`` returns for one batch."""

    maps: np.ndarray  # (b, H, W) raw
    classes: np.ndarray  # (b,) the class explained
    scores: np.ndarray  # (b,) its score on the clean input
    images: np.ndarray | None = None  # (b, 3, H, W) image-space result, where the method has one
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per-input arrays, first axis b


class Method:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    requires: ClassVar[frozenset[Capability]] = frozenset()
    Params: ClassVar[type] = MethodParams
    batch_hint: ClassVar[int] = 16
    # Settings for `cnnviz demo`: quick but faithful.
    demo_params: ClassVar[dict[str, Any]] = {}
    plugin: ClassVar[str] = ""  # set by the registry: which plugin contributed it
    # What a target names for this method: "class" (index, label, top1),
    # "neuron" (layer:channel[@y,x]) or "detection" (detection:CLASS@box, on a
    # detector); conformance tests and the demo pick theirs by it.
    explains: ClassVar[str] = "class"

    def __init__(self, adapter, params=None, scheduler: Scheduler | None = None):
        self.adapter = adapter
        self.params = params if params is not None else self.make_params()
        self.scheduler = scheduler or Scheduler(device=getattr(adapter, "device", "cpu"), progress=False)
        # What the method reports about how it ran (runtime chosen, timings...);
        # copied into the result's metadata.
        self.metadata: dict[str, Any] = {}

    @classmethod
    def unsupported(cls, adapter) -> str | None:
        """Why this model cannot run the method although it has the required
        capabilities (an architecture the method needs, such as attention
        blocks), or None. Cheap: reads the model, runs nothing. The demo
        leaves such methods out; running one anyway raises the same reason."""
        return None

    @classmethod
    def demo_target(cls, adapter, inputs: np.ndarray):
        """The target `cnnviz demo` uses; None means each image's top-1 class."""
        return None

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def make_params(cls, **values):
        """Build and check the Params dataclass: unknown names, values of the
        wrong type (or non-finite floats), values outside ``choices`` or below
        ``minimum`` raise InputError naming the method and the parameter; then
        the method's own :meth:`check_params` runs."""
        fields = {f.name: f for f in param_fields(cls.Params)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(
                f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; it takes: {', '.join(fields) or 'none'}"
            )
        hints = param_types(cls.Params)
        values = {name: value if isinstance(value, fields[name].metadata.get("python_types", ())) else
                  check_value(cls.name, name, hints.get(name), value, fields[name].metadata.get("allow_nonfinite", False))
                  for name, value in values.items()}
        params = cls.Params(**values)
        for name, field in fields.items():
            value = getattr(params, name)
            choices, minimum = field.metadata.get("choices"), field.metadata.get("minimum")
            if choices and value is not None and value not in choices:
                raise InputError(f"{cls.name}: --{name.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise InputError(f"{cls.name}: --{name.replace('_', '-')} must be at least {minimum}, got {value!r}")
        cls.check_params(params)
        return params

    @classmethod
    def check_params(cls, params) -> None:
        """Cross-parameter checks a method may add; raise InputError."""

    def error(self, message: str) -> MethodError:
        return MethodError(self.name, message)

    def batch_size(self) -> int:
        return self.params.batch_size or self.batch_hint


class AttributionMethod(Method):
    """Explains a class score with a map over the input pixels.

    Subclasses implement :meth:`attribute` for one batch of preprocessed inputs.
    """

    kind = "attribution"
    Params = AttributionParams

    def setup(self) -> None:
        """Checks and preparation done once before any batch (layer names,
        model structure); errors raised here leave nothing written."""

    def check_targets(self, targets: list[Target]) -> None:
        """Refuse targets this method cannot explain, before any batch runs.
        By default a method explains classes, not neurons."""
        validate_targets(targets, {"class", "top1"}, self.name, advice="a neuron target needs a neuron method")

    def attribute(self, inputs: np.ndarray, targets: list[Target]) -> Attribution:
        raise NotImplementedError

    def run(
        self,
        inputs: np.ndarray,
        targets: list[Target],
        names: list[str] | None = None,
        on_batch: Callable[[AttributionResult, int], None] | None = None,
    ) -> AttributionResult:
        names = names or [f"input{i}" for i in range(len(inputs))]

        def work(start: int, stop: int) -> Attribution:
            return self.attribute(inputs[start:stop], targets[start:stop])

        def report(start: int, stop: int, part: Attribution) -> None:
            if on_batch is not None:
                on_batch(self._result([part], inputs[start:stop], targets[start:stop], names[start:stop]), start)

        with self.adapter.session():
            self.setup()
            self.check_targets(targets)
            parts = self.scheduler.map_batches(work, len(inputs), self.batch_size(), on_batch=report, desc=self.name)
        return self._result(parts, inputs, targets, names)

    def _result(self, parts, inputs, targets, names) -> AttributionResult:
        extras_keys = parts[0].extras.keys()
        images = [p.images for p in parts]
        return AttributionResult(
            method=self.name,
            model=self.adapter.describe(),
            params=dataclasses.asdict(self.params),
            targets=list(targets),
            names=list(names),
            labels=self.adapter.labels,
            maps=np.concatenate([p.maps for p in parts]).astype(np.float32, copy=False),
            images=None if images[0] is None else np.concatenate(images).astype(np.float32, copy=False),
            classes=np.concatenate([p.classes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
            extras={k: np.concatenate([p.extras[k] for p in parts]) for k in extras_keys},
            display=self.adapter.display_images(inputs),
            metadata=copy.deepcopy(self.metadata),
        )


def check_method_class(cls) -> None:
    """The registry's checks on a contributed class; raises ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{cls!r} is not a cnnviz_core.Method subclass")
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
    if not dataclasses.is_dataclass(cls.Params):
        raise ValueError(f"{cls.__name__}.Params must be a dataclass")
    for field in param_fields(cls.Params):
        if field.name in RESERVED_PARAMS:
            raise ValueError(
                f"{cls.__name__}.Params.{field.name}: {field.name!r} is reserved for `cnnviz run`'s own flags "
                f"({', '.join(sorted(RESERVED_PARAMS))}); rename it"
            )
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__}.Params.{field.name} needs a default")
    try:
        hints = param_types(cls.Params)
    except Exception as error:  # an annotation that names something undefined
        raise ValueError(f"{cls.__name__}.Params: its annotations cannot be resolved ({type(error).__name__}: {error})") from None
    for field in param_fields(cls.Params):
        if field.default is not dataclasses.MISSING:
            try:  # a default of the wrong type would be refused from every user
                check_value(cls.name, field.name, hints.get(field.name), field.default, field.metadata.get("allow_nonfinite", False))
            except InputError as error:
                raise ValueError(f"{cls.__name__}.Params.{field.name} has a bad default: {error}") from None
