"""Occlusion's runner decisions kept on disk: a later process on the same
model, input and machine skips the probe; another key (weights, threads)
probes again; a damaged cache is ignored and rewritten; a run much slower or
faster than the remembered figure forgets the decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cnnviz_core
import cnnviz_plugins.attribution.occlusion.runtime as occlusion_runtime
from cnnviz_plugins.attribution.occlusion import decision_cache
from cnnviz_plugins.attribution.occlusion.backends import forget_decisions
from conftest import small_torch_adapter

# 15 x 15 windows on a 32-px input: enough for a three-round probe of torch and onnxruntime at 8 a batch
PARAMS = dict(target=3, window=4, stride=2, batch_size=8, incremental="off")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNVIZ_CACHE", str(folder))
    forget_decisions()
    occlusion_runtime._engines.clear()
    yield folder
    forget_decisions()


def records(folder) -> list[dict]:
    with open(folder / "notes.json", encoding="utf-8") as stream:
        notes = json.load(stream)
    return [value for key, value in notes.items() if key.startswith(decision_cache.PREFIX) and value is not None]


def image(seed: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 3, 32, 32)).astype(np.float32)


def fresh_process_run(adapter, x, **params) -> dict:
    """A run as a new process would make it: nothing remembered in memory."""
    forget_decisions()
    return cnnviz_core.run("occlusion", adapter, x, **{**PARAMS, **params}).metadata["runtime"]


def test_second_cli_run_takes_the_decision_from_disk(tmp_path):
    import timm
    from PIL import Image

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    env = {**os.environ, "CNNVIZ_CACHE": str(tmp_path / "cache"), "CNNVIZ_PROGRESS": "0"}
    script = os.path.join(os.path.dirname(sys.executable), "cnnviz")
    runs, kept_after = [], []
    for out in ("first", "second"):
        command = [script, "run", "occlusion", "--model", "timm:test_resnet", "--weights", str(tmp_path / "w.pth"),
                   "--input-size", "64", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                   "--image", str(tmp_path / "x.png"), "--window", "6", "--stride", "2", "--incremental", "off",
                   "--out", str(tmp_path / out)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert completed.returncode == 0, completed.stderr[-2000:]
        with open(tmp_path / out / "occlusion.json", encoding="utf-8") as stream:
            runs.append(json.load(stream)["metadata"]["runtime"])
        kept_after.append(records(tmp_path / "cache"))
    first, second = runs
    assert first["how"] == "probe" and first["probe_rounds"] >= 2
    assert set(first["probe_ms_per_window"]) == {"torch", "onnxruntime"}
    # 900 windows: enough for the probe's rounds and the batch tuning to finish in the first run, even on a busy machine
    assert first["batch_tuning"]["how"] == "tuned", first["batch_tuning"]
    kept = kept_after[0]
    assert len(kept) == 1 and kept[0]["chosen"] == first["chosen"] and kept[0]["batch_size"] == first["batch_size"]
    assert kept[0]["key"]["input"] == [3, 64, 64] and kept[0]["key"]["window"] == [6, 6]
    assert kept[0]["key"]["threads"] >= 1 and kept[0]["key"]["cpu"] == decision_cache.cpu_model()
    # the second process neither probed nor tuned: both came from the first one's record
    assert second["how"] == "remembered on disk" and "probe_rounds" not in second
    assert second["chosen"] == first["chosen"] and second["probe_ms_per_window"] == first["probe_ms_per_window"]
    assert second["batch_tuning"] == {"how": "remembered on disk"} and second["batch_size"] == first["batch_size"]
    # then it checked its pace: a busy machine may make it depart from the record, which is then forgotten
    departed = second["speed_check"]["verdict"].startswith("departed")
    assert len(kept_after[1]) == (0 if departed else 1), second["speed_check"]
    np.testing.assert_allclose(np.load(tmp_path / "first" / "occlusion.maps.npy"),
                               np.load(tmp_path / "second" / "occlusion.maps.npy"), atol=1e-4)


def test_a_decision_is_kept_per_weights_and_thread_count(cache, monkeypatch):
    # only the keys are checked here: a loaded machine must not make a run forget its record (tested below)
    monkeypatch.setattr(occlusion_runtime, "DEPARTURE", float("inf"))
    adapter, x = small_torch_adapter(seed=5), image()
    first = fresh_process_run(adapter, x)
    assert first["how"] == "probe"
    (record,) = records(cache)
    assert record["key"]["weights"] == adapter.weights_digest() and record["batch_size"] == 8
    # the figure kept is the median of the run's own first batches
    assert record["ms_per_window"] == pytest.approx(first["speed_kept"]["ms_per_window"], abs=1e-3)
    assert fresh_process_run(adapter, x)["how"] == "remembered on disk"
    assert fresh_process_run(small_torch_adapter(seed=6), x)["how"] == "probe"  # other weights: another key
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        assert fresh_process_run(adapter, x)["how"] == "probe"  # another thread count: another key
    finally:
        torch.set_num_threads(threads)
    assert len(records(cache)) == 3
    assert fresh_process_run(adapter, x)["how"] == "remembered on disk"


@pytest.mark.parametrize("damage", ["file", "entry"])
def test_a_damaged_cache_is_ignored_and_rewritten(cache, damage, monkeypatch):
    monkeypatch.setattr(occlusion_runtime, "DEPARTURE", float("inf"))  # as above: the record must stay
    adapter, x = small_torch_adapter(seed=7), image()
    cache.mkdir(parents=True, exist_ok=True)
    if damage == "file":
        (cache / "notes.json").write_text('{"occlusion_runner|', encoding="utf-8")
    else:
        assert fresh_process_run(adapter, x)["how"] == "probe"
        notes = json.loads((cache / "notes.json").read_text(encoding="utf-8"))
        for key, value in notes.items():
            if key.startswith(decision_cache.PREFIX):
                value.update(chosen="no such runner", batch_size="many")
        (cache / "notes.json").write_text(json.dumps(notes), encoding="utf-8")
    assert fresh_process_run(adapter, x)["how"] == "probe"
    (record,) = records(cache)
    assert record["chosen"] in {"torch", "onnxruntime"} and record["batch_size"] == 8
    assert fresh_process_run(adapter, x)["how"] == "remembered on disk"


def test_a_run_far_from_the_remembered_speed_forgets_the_decision_and_probes_again(cache):
    adapter = small_torch_adapter(seed=8)
    assert fresh_process_run(adapter, image())["how"] == "probe"
    notes = json.loads((cache / "notes.json").read_text(encoding="utf-8"))
    for key, value in notes.items():
        if key.startswith(decision_cache.PREFIX):
            value["ms_per_window"] = 1e6  # remembered from a machine a million times slower
    (cache / "notes.json").write_text(json.dumps(notes), encoding="utf-8")
    forget_decisions()
    two_images = np.concatenate([image(1), image(2)])
    runtime = cnnviz_core.run("occlusion", adapter, two_images, **PARAMS).metadata["runtime"]
    check = runtime["speed_check"]
    assert check["remembered_ms_per_window"] == 1e6 and check["observed_ms_per_window"] < 5e5
    assert check["verdict"].startswith("departed")
    assert runtime["how"] == "probe"  # the second image's windows probed again
    (record,) = records(cache)  # and kept the new figure
    assert record["ms_per_window"] < 5e5


def test_a_forced_runner_keeps_its_tuned_batch_size(cache):
    adapter, x = small_torch_adapter(seed=9), image()
    params = dict(runtime="torch", batch_size=None, stride=1)  # 29 x 29 windows: enough to finish tuning
    first = fresh_process_run(adapter, x, **params)
    assert first["how"] == "forced" and first["batch_tuning"]["how"] == "tuned"
    second = fresh_process_run(adapter, x, **params)
    assert second["batch_tuning"] == {"how": "remembered on disk"} and second["batch_size"] == first["batch_size"]
