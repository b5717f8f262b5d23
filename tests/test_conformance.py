"""Conformance tests generated from the live registry: every registered method
on every small test model and adapter its capabilities allow. A method is
tested here by being registered.

Every kind (attribution, synthesis, analysis) is checked to leave the model as
it found it — no hook, parameters bit for bit, each parameter's requires_grad
and each submodule's train/eval flag, the device, the tensors' placement and
layout — after a run that succeeds, after one that fails mid-way (an exception
injected into the model's forward part-way through the method's work) and
after one refused with a typed error (an unknown layer)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core.errors import CnnvizError
from cnnviz_core.registry import Registry
from conftest import hook_total, small_torch_adapter, state_copy, states_equal

LIVE = Registry()  # the entry points installed with the project, read at collection
ADAPTERS = ("torch", "onnx")


def _capabilities(kind: str) -> frozenset:
    return next(a for a in LIVE.adapters if a.kind == kind).capabilities


# Methods that need an architecture the small test CNN lacks: run where they
# apply (tests/test_attention_rollout.py and the zoo, on ViT and DeiT); here
# the CNN must be refused with a typed error.
NEED_ANOTHER_ARCHITECTURE = {"attention_rollout": "attention blocks"}


def _cases(runs: bool, kind_of_method: str = "attribution"):
    for name, method_class in LIVE.methods.items():
        if method_class.kind != kind_of_method or method_class.explains == "detection":
            continue  # a detection method needs a detector: tests/test_detection.py runs drise on detectors
        if name in NEED_ANOTHER_ARCHITECTURE:
            continue
        for kind in ADAPTERS:
            if (set(method_class.requires) <= _capabilities(kind)) == runs:
                yield pytest.param(name, kind, id=f"{name}-{kind}")


def _adapter(kind: str, small_onnx_path):
    return small_torch_adapter() if kind == "torch" else cnnviz_core.load_model(small_onnx_path)


# Upper bounds on the demo's settings for a 32-pixel test model: few steps.
QUICK_LIMITS = {"window": 8, "stride": 8, "steps": 3, "generations": 3, "population": 8, "octaves": 1,
                "masks": 64, "max_iter": 250}


def _quick_params(method_class) -> dict:
    """The method's demo settings, scaled to a 32-pixel input and a few steps."""
    params = dict(method_class.demo_params)
    names = {f.name for f in dataclasses.fields(method_class.Params)}
    for key, limit in QUICK_LIMITS.items():
        if method_class.kind == "attribution" and key not in ("window", "stride"):
            continue  # an attribution method's demo settings are already quick; fewer steps would only break its checks
        if key in params:
            params[key] = min(params[key], limit)
        elif key in names and key in ("steps", "generations"):
            params[key] = limit
    return params


def _targets(method_class, adapter):
    """A class and top-1 for class methods; two units of the default layer for neuron methods."""
    if method_class.explains == "neuron":
        layer = adapter.default_layer()
        return [f"{layer}:1", f"{layer}:2@3,4"]
    return [1, "top1"]


def test_registry_lists_every_builtin_method():
    assert {"gradcam", "occlusion"} <= set(LIVE.methods)
    assert not LIVE.failures


@pytest.mark.parametrize("name, kind", list(_cases(runs=True)))
def test_method_runs_and_leaves_model_untouched(name, kind, small_onnx_path, small_inputs, tmp_path):
    adapter = _adapter(kind, small_onnx_path)
    snapshot = _watch(adapter)  # the method must run in eval mode and put each flag back
    method_class = LIVE.methods[name]
    result = cnnviz_core.run(name, adapter, small_inputs, target=_targets(method_class, adapter), **_quick_params(method_class))

    assert result.maps.shape == (2, 32, 32) and result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all()
    if method_class.explains == "class":
        assert result.classes[0] == 1 and result.classes[1] == int(np.argmax(adapter.logits(small_inputs)[1]))
    else:
        assert list(result.classes) == [-1, -1]
    if result.images is not None:
        assert result.images.shape == (2, 3, 32, 32)
    snapshot.assert_unchanged(adapter)

    written = result.save(tmp_path)
    assert all(os.path.exists(f) for f in written)
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["method"] == name and record["model"]["adapter"] == kind
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@dataclasses.dataclass
class ModelSnapshot:
    """What a run must leave as it was: the adapter's device, and for a torch
    model its parameters and buffers (values, device, dtype, layout), each
    parameter's identity and requires_grad, and each submodule's train flag."""

    device: str
    state: dict | None = None
    placement: dict | None = None
    parameter_ids: list | None = None
    requires_grad: list | None = None
    training: list | None = None

    @classmethod
    def take(cls, adapter) -> "ModelSnapshot":
        module = getattr(adapter, "module", None)
        if module is None:
            return cls(device=adapter.device)
        return cls(
            device=adapter.device,
            state=state_copy(module),
            placement={k: (v.device, v.dtype, v.stride()) for k, v in module.state_dict().items()},
            parameter_ids=[id(p) for p in module.parameters()],
            requires_grad=[p.requires_grad for p in module.parameters()],
            training=[m.training for m in module.modules()],
        )

    def assert_unchanged(self, adapter) -> None:
        assert adapter.device == self.device
        module = getattr(adapter, "module", None)
        if module is None:
            return
        assert hook_total(module) == 0
        assert states_equal(self.state, state_copy(module))
        assert {k: (v.device, v.dtype, v.stride()) for k, v in module.state_dict().items()} == self.placement
        assert [id(p) for p in module.parameters()] == self.parameter_ids
        assert [p.requires_grad for p in module.parameters()] == self.requires_grad
        assert [m.training for m in module.modules()] == self.training
        assert all(p.grad is None for p in module.parameters())


def _watch(adapter) -> ModelSnapshot:
    """Put a torch model in a state a careless restore would not reproduce
    (training, one submodule in eval, one parameter frozen), then snapshot it."""
    module = getattr(adapter, "module", None)
    if module is not None:
        module.train()
        module.features[1].eval()  # the batch norm: "restore" must not mean module.train()
        module.features[0].bias.requires_grad_(False)  # nor every flag set to True
    return ModelSnapshot.take(adapter)


def _all_cases(adapter_kind: str | None = None):
    for kind_of_method in ("attribution", "synthesis", "analysis"):
        for case in _cases(runs=True, kind_of_method=kind_of_method):
            if adapter_kind is None or case.values[1] == adapter_kind:
                yield case


def _run_anything(name: str, adapter, **extra):
    """One run of any kind of method on the small model, with quick settings."""
    method_class = LIVE.methods[name]
    params = {**_quick_params(method_class), **extra}
    rng = np.random.default_rng(0)
    if method_class.kind == "analysis":
        dataset = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 4) for i in range(40)]
        return cnnviz_core.run(name, adapter, dataset, **params)
    if method_class.kind == "synthesis":
        pixels = rng.random((2, 3, 32, 32)).astype(np.float32)
        if method_class.needs_image:
            return cnnviz_core.run(name, adapter, pixels, **params)
        return cnnviz_core.run(name, adapter, None, target=[1, 2], **params)
    inputs = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    return cnnviz_core.run(name, adapter, inputs, target=_targets(method_class, adapter), **params)


class InjectedFailure(RuntimeError):
    pass


def _count_or_fail(module, fail_at: int | None):
    """Wrap the first convolution's forward (an attribute, not a hook, so that
    hook counts stay exact): count its calls, and raise on call ``fail_at``."""
    conv = module.features[0]
    original, calls = conv.forward, [0]

    def forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_at:
            raise InjectedFailure(f"injected failure in forward call {fail_at}")
        return original(*args, **kwargs)

    conv.forward = forward
    return calls


@pytest.mark.parametrize("name, kind", list(_all_cases("torch")))
def test_model_restored_after_success_and_after_a_failure_midway(name, kind):
    adapter = small_torch_adapter()
    snapshot = _watch(adapter)
    calls = _count_or_fail(adapter.module, fail_at=None)
    try:
        _run_anything(name, adapter)
    finally:
        del adapter.module.features[0].forward
    snapshot.assert_unchanged(adapter)
    assert calls[0] >= 1

    # The same work on a fresh copy (adapters cache answers such as the default
    # layer), failing half-way: hooks, gradient roots, frozen parameters, eval
    # mode and backward rules are all in place by then.
    adapter = small_torch_adapter()
    snapshot = _watch(adapter)
    midway = calls[0] // 2 + 1
    failing = _count_or_fail(adapter.module, fail_at=midway)
    try:
        with pytest.raises(InjectedFailure):
            _run_anything(name, adapter)
    finally:
        del adapter.module.features[0].forward
    assert failing[0] == midway
    snapshot.assert_unchanged(adapter)


def _takes_a_layer(method_class) -> bool:
    names = {f.name for f in dataclasses.fields(method_class.Params)}
    return "layer" in names or "layers" in names


@pytest.mark.parametrize("name, kind", [c for c in _all_cases() if _takes_a_layer(LIVE.methods[c.values[0]])])
def test_model_restored_after_a_typed_error(name, kind, small_onnx_path):
    adapter = _adapter(kind, small_onnx_path)
    snapshot = _watch(adapter)
    field = "layer" if "layer" in {f.name for f in dataclasses.fields(LIVE.methods[name].Params)} else "layers"
    with pytest.raises(CnnvizError, match="no_such_layer"):
        _run_anything(name, adapter, **{field: "no_such_layer"})
    snapshot.assert_unchanged(adapter)


@pytest.mark.parametrize("name, kind", list(_cases(runs=True, kind_of_method="synthesis")))
def test_synthesis_method_runs_and_leaves_model_untouched(name, kind, small_onnx_path, tmp_path):
    adapter = _adapter(kind, small_onnx_path)
    snapshot = _watch(adapter)
    method_class = LIVE.methods[name]
    pixels = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    inputs = pixels if method_class.needs_image else None
    target = None if method_class.needs_image else [1, 2]  # the demo's targets are ImageNet classes; this model has 5
    result = cnnviz_core.run(name, adapter, inputs, target=target, **_quick_params(method_class))

    count = 2 if method_class.needs_image else len(result.targets)
    assert result.images.shape == (count, 3, 32, 32) and result.images.dtype == np.float32
    assert np.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1
    assert result.history["objective"].shape[0] == count and np.isfinite(result.history["objective"]).all()
    snapshot.assert_unchanged(adapter)
    written = result.save(tmp_path)
    assert all(os.path.exists(f) for f in written)
    assert json.loads((tmp_path / f"{name}.json").read_text())["kind"] == "synthesis"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.parametrize("name, kind", list(_cases(runs=True, kind_of_method="analysis")))
def test_analysis_method_runs_and_leaves_model_untouched(name, kind, small_onnx_path, tmp_path):
    adapter = _adapter(kind, small_onnx_path)
    snapshot = _watch(adapter)
    rng = np.random.default_rng(0)
    dataset = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 4) for i in range(40)]
    result = cnnviz_core.run(name, adapter, dataset, **_quick_params(LIVE.methods[name]))

    assert result.arrays or result.pictures
    assert all(np.isfinite(a).all() for a in result.arrays.values() if np.issubdtype(a.dtype, np.floating))
    snapshot.assert_unchanged(adapter)
    written = result.save(tmp_path)
    assert all(os.path.exists(f) for f in written)
    assert json.loads((tmp_path / f"{name}.json").read_text())["kind"] == "analysis"


@pytest.mark.parametrize("name, kind", [c for k in ("attribution", "synthesis", "analysis") for c in _cases(False, k)])
def test_method_refused_without_capability(name, kind, small_onnx_path, small_inputs):
    adapter = _adapter(kind, small_onnx_path)
    with pytest.raises(cnnviz_core.CapabilityError) as caught:
        cnnviz_core.run(name, adapter, small_inputs)
    message = str(caught.value)
    missing = set(LIVE.methods[name].requires) - set(adapter.capabilities)
    assert all(str(m) in message for m in missing)
    working = [n for n, c in LIVE.methods.items() if set(c.requires) <= set(adapter.capabilities)]
    assert caught.value.working == working and all(w in message for w in working)


def test_every_method_has_a_summary_and_documented_params():
    from cnnviz_core.method import param_fields

    for name, method_class in LIVE.methods.items():
        assert method_class.summary(), name
        for field in param_fields(method_class.Params):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help text"


@pytest.mark.parametrize("name", sorted(NEED_ANOTHER_ARCHITECTURE))
def test_a_method_for_another_architecture_refuses_the_small_cnn(name):
    adapter = small_torch_adapter()
    with pytest.raises(cnnviz_core.errors.MethodError, match=NEED_ANOTHER_ARCHITECTURE[name]):
        cnnviz_core.run(name, adapter, np.zeros((1, 3, 32, 32), np.float32), normalized=True)
