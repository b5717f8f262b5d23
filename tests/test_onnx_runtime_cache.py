"""The on-disk cache of ONNX copies of torch models: where it lives, what its
key depends on, atomic writes, recovery from a damaged file, kept sessions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_core import notes
from cnnviz_adapters import onnx_runtime_cache as cache
from cnnviz_adapters.torch_adapter import TorchAdapter
from conftest import SMALL_CONFIG, small_torch_adapter

from tiny_models import SmallConvNet


@pytest.fixture(autouse=True)
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    cache.clear_sessions()
    yield tmp_path / "cache" / "onnx"
    cache.clear_sessions()


@pytest.fixture
def exports(monkeypatch):
    calls = []
    real = cache.export_onnx
    monkeypatch.setattr(cache, "export_onnx", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    return calls


def test_cache_folder_is_the_environment_variable_or_the_home_cache(tmp_path, monkeypatch):
    assert cache.cache_folder() == str(tmp_path / "cache" / "onnx")
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_folder() == str(tmp_path / "home" / ".cache" / "cnnviz" / "onnx")


def test_key_follows_weights_buffers_architecture_and_input_size():
    base = cache.fingerprint(small_torch_adapter(seed=0))
    assert cache.fingerprint(small_torch_adapter(seed=0)) == base  # same weights, another module object
    assert cache.fingerprint(small_torch_adapter(seed=1)) != base
    adapter = small_torch_adapter(seed=0)
    with torch.no_grad():
        adapter.module.features[1].running_var.mul_(2)  # a buffer changed in place after a first fingerprint
    assert cache.fingerprint(adapter) != base
    wider = TorchAdapter(SmallConvNet(classes=6, seed=0), "small", SMALL_CONFIG)
    assert cache.fingerprint(wider) != base
    bigger = TorchAdapter(SmallConvNet(seed=0), "small", SMALL_CONFIG.__class__(**{**SMALL_CONFIG.to_dict(), "input_size": (40, 40)}))
    assert cache.fingerprint(bigger) != base


def test_export_happens_once_then_the_file_is_found(folder, exports):
    first = cache.cached_onnx(small_torch_adapter(seed=0))
    second = cache.cached_onnx(small_torch_adapter(seed=0))
    assert first.exported and not second.exported and exports == ["small_convnet"]
    assert first.path == second.path and os.path.dirname(first.path) == str(folder)
    assert sorted(os.listdir(folder)) == sorted([os.path.basename(first.path), os.path.basename(first.path) + ".json"])
    record = json.loads(open(first.path + ".json").read())
    assert record["key"] == first.key and record["input_size"] == [32, 32]
    other = cache.cached_onnx(small_torch_adapter(seed=3))
    assert other.exported and other.path != first.path and len(exports) == 2


def test_exported_copy_computes_the_same_logits_at_any_batch():
    adapter = small_torch_adapter(seed=2)
    session, _ = cache.cached_session(adapter)
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(logits, adapter.logits(x), atol=1e-5)


def test_failed_export_leaves_nothing_under_the_final_name(folder, monkeypatch):
    def half_written(adapter, path, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"partial")
        raise RuntimeError("exporter died")

    monkeypatch.setattr(cache, "export_onnx", half_written)
    with pytest.raises(RuntimeError, match="exporter died"):
        cache.cached_onnx(small_torch_adapter(seed=4))
    assert os.listdir(folder) == []  # the staging folder went with the error


def test_damaged_cached_file_is_exported_again(exports):
    adapter = small_torch_adapter(seed=5)
    path = cache.cached_onnx(adapter).path
    with open(path, "wb") as stream:
        stream.write(b"not a model")
    session, model = cache.cached_session(adapter)
    assert model.exported and len(exports) == 2
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_sessions_are_kept_per_file_and_bounded():
    paths = [cache.cached_onnx(small_torch_adapter(seed=s)).path for s in range(cache.MAX_SESSIONS + 1)]
    first = cache.session_for(paths[0])
    assert cache.session_for(paths[0]) is first
    for path in paths[1:]:
        cache.session_for(path)
    assert cache.session_for(paths[0]) is not first  # the oldest was let go


def test_only_torch_models_are_exported(small_onnx_path):
    with pytest.raises(cnnviz_core.InputError, match="only torch models"):
        cache.cached_onnx(cnnviz_core.load_model(small_onnx_path))


def test_notes_survive_and_a_damaged_notes_file_is_replaced(folder):
    assert notes.read("missing") is None
    notes.write("a", 0.25)
    notes.write("b", [1, 2])
    assert notes.read("a") == 0.25 and notes.read("b") == [1, 2]
    root = folder.parent  # $CNNVIZ_CACHE: notes beside the onnx/ folder of exported models
    (root / notes.NOTES).write_text("{broken")
    assert notes.read("a") is None
    notes.write("c", 1)
    assert notes.read("c") == 1
