"""An exported ONNX model and its sidecar land together or not at all, and the
demo's sample files are written atomically: a failure at any step leaves no
model without its complete sidecar and no temporary file behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters import onnx_export
from cnnviz_adapters.onnx_adapter import sidecar_path
from cnnviz_core import atomic, demo

from conftest import small_torch_adapter


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_export_writes_both_files(tmp_path):
    path = onnx_export.export_onnx(small_torch_adapter(), tmp_path / "small.onnx")
    assert listing(tmp_path) == ["small.onnx", "small.onnx.json"]
    assert json.loads(open(sidecar_path(path)).read())["config"]["input_size"] == [32, 32]
    loaded = cnnviz_core.load_model(path)
    assert loaded.config.input_size == (32, 32)  # read from the sidecar


def failing_on(monkeypatch, call: int):
    """os.replace fails on its ``call``-th use (a crash between the renames)."""
    calls = {"n": 0}
    original = os.replace

    def replace(source, target):
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError("simulated crash while renaming")
        return original(source, target)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("call", [1, 2])
def test_a_crash_while_renaming_leaves_neither_file(tmp_path, monkeypatch, call):
    failing_on(monkeypatch, call)  # 1: the sidecar's rename fails; 2: the model's, after the sidecar landed
    with pytest.raises(OSError, match="simulated crash"):
        onnx_export.export_onnx(small_torch_adapter(), tmp_path / "small.onnx")
    assert listing(tmp_path) == []


def test_a_failing_model_write_leaves_neither_file(tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        with open(args[2], "wb") as stream:  # half a model, then the exporter dies
            stream.write(b"\x08\x07half")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter failed"):
        onnx_export.export_onnx(small_torch_adapter(), tmp_path / "small.onnx")
    assert listing(tmp_path) == []


def test_a_failed_re_export_never_shows_the_old_model_with_the_new_sidecar(tmp_path, monkeypatch):
    path = tmp_path / "small.onnx"
    onnx_export.export_onnx(small_torch_adapter(seed=0), path)
    renamed = small_torch_adapter(seed=1)
    renamed.name = "renamed"
    failing_on(monkeypatch, 2)  # the new sidecar lands, the new model does not
    with pytest.raises(OSError):
        onnx_export.export_onnx(renamed, path)
    # the old model went before the new sidecar landed: no mismatched pair is left
    assert "small.onnx" not in listing(tmp_path)
    assert all(not name.startswith(".tmp-") for name in listing(tmp_path))


def test_publish_together_renames_the_last_file_last(tmp_path, monkeypatch):
    order = []
    original = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: order.append(os.path.basename(b)) or original(a, b))

    def writer(text):
        return lambda temporary: open(temporary, "w").write(text)

    atomic.publish_together([(tmp_path / "first", writer("1")), (tmp_path / "second", writer("2")), (tmp_path / "model", writer("m"))])
    assert order == ["first", "second", "model"]
    assert [open(tmp_path / n).read() for n in ("first", "second", "model")] == ["1", "2", "m"]


def test_demo_dataset_files_are_written_atomically(tmp_path, monkeypatch):
    from PIL import Image

    calls = {"n": 0}
    original = Image.Image.save

    def save(self, target, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third crop: half a file, then a crash
            stream = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target
            stream.write(b"\xff\xd8half")
            stream.flush()
            raise OSError("simulated crash while writing")
        return original(self, target, *args, **kwargs)

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    monkeypatch.setattr(demo, "CROPS_PER_PHOTO", 2)
    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OSError, match="simulated crash"):
        demo._write_dataset(str(tmp_path / "a"))
    assert files(tmp_path / "a") == ["chelsea/chelsea_00.jpg", "chelsea/chelsea_01.jpg"]  # whole files only
    monkeypatch.setattr(Image.Image, "save", original)
    paths = demo._write_dataset(str(tmp_path / "a"))  # a rerun completes, keeping the whole files it finds
    assert len(paths) == 2 * len(demo.DATASET_SAMPLES) and files(tmp_path / "a") == sorted(os.path.relpath(p, tmp_path / "a") for p in paths)
    fresh = demo._write_dataset(str(tmp_path / "b"))  # the same crops every time
    for kept, again in zip(paths, fresh):
        np.testing.assert_array_equal(np.asarray(Image.open(kept)), np.asarray(Image.open(again)))
