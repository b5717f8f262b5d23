"""Conformance tests generated from the live registry: every registered method
on every small test model and adapter its capabilities allow. A method is
tested here by being registered."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core.registry import Registry
from conftest import hook_total, small_torch_adapter, state_copy, states_equal

LIVE = Registry()  # the entry points installed with the project, read at collection
ADAPTERS = ("torch", "onnx")


def _capabilities(kind: str) -> frozenset:
    return next(a for a in LIVE.adapters if a.kind == kind).capabilities


def _cases(runs: bool, kind_of_method: str = "attribution"):
    for name, method_class in LIVE.methods.items():
        if method_class.kind != kind_of_method:
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
    module = getattr(adapter, "module", None)
    if module is not None:
        module.train()  # the method must run in eval mode and put training back
        before = state_copy(module)
        flags = [p.requires_grad for p in module.parameters()]
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
    if module is not None:
        assert hook_total(module) == 0
        assert states_equal(before, state_copy(module))
        assert module.training and all(m.training for m in module.modules())
        assert [p.requires_grad for p in module.parameters()] == flags
        assert all(p.grad is None for p in module.parameters())

    written = result.save(tmp_path)
    assert all(os.path.exists(f) for f in written)
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["method"] == name and record["model"]["adapter"] == kind
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.parametrize("name, kind", [c for c in _cases(runs=True) if c.values[1] == "torch"])
def test_method_restores_model_after_an_error(name, kind, small_inputs):
    adapter = small_torch_adapter()
    module = adapter.module
    module.train()
    before = state_copy(module)
    module.fail = True
    with pytest.raises(RuntimeError, match="injected failure"):
        cnnviz_core.run(name, adapter, small_inputs, target=_targets(LIVE.methods[name], adapter), **_quick_params(LIVE.methods[name]))
    assert hook_total(module) == 0
    assert states_equal(before, state_copy(module))
    assert module.training and all(m.training for m in module.modules())
    assert all(p.requires_grad for p in module.parameters())


def _untouched(module, before, flags) -> None:
    assert hook_total(module) == 0
    assert states_equal(before, state_copy(module))
    assert module.training and all(m.training for m in module.modules())
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())


def _watch(adapter):
    module = getattr(adapter, "module", None)
    if module is None:
        return None, None, None
    module.train()
    return module, state_copy(module), [p.requires_grad for p in module.parameters()]


@pytest.mark.parametrize("name, kind", list(_cases(runs=True, kind_of_method="synthesis")))
def test_synthesis_method_runs_and_leaves_model_untouched(name, kind, small_onnx_path, tmp_path):
    adapter = _adapter(kind, small_onnx_path)
    module, before, flags = _watch(adapter)
    method_class = LIVE.methods[name]
    pixels = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    inputs = pixels if method_class.needs_image else None
    target = None if method_class.needs_image else [1, 2]  # the demo's targets are ImageNet classes; this model has 5
    result = cnnviz_core.run(name, adapter, inputs, target=target, **_quick_params(method_class))

    count = 2 if method_class.needs_image else len(result.targets)
    assert result.images.shape == (count, 3, 32, 32) and result.images.dtype == np.float32
    assert np.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1
    assert result.history["objective"].shape[0] == count and np.isfinite(result.history["objective"]).all()
    if module is not None:
        _untouched(module, before, flags)
    written = result.save(tmp_path)
    assert all(os.path.exists(f) for f in written)
    assert json.loads((tmp_path / f"{name}.json").read_text())["kind"] == "synthesis"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.parametrize("name, kind", list(_cases(runs=True, kind_of_method="analysis")))
def test_analysis_method_runs_and_leaves_model_untouched(name, kind, small_onnx_path, tmp_path):
    adapter = _adapter(kind, small_onnx_path)
    module, before, flags = _watch(adapter)
    rng = np.random.default_rng(0)
    dataset = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 4) for i in range(40)]
    result = cnnviz_core.run(name, adapter, dataset, **_quick_params(LIVE.methods[name]))

    assert result.arrays or result.pictures
    assert all(np.isfinite(a).all() for a in result.arrays.values() if np.issubdtype(a.dtype, np.floating))
    if module is not None:
        _untouched(module, before, flags)
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
