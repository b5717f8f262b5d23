"""Threads and allocator (issue 15): each dataset worker takes its share of
the cores, --threads / threads= are honoured by torch and onnxruntime alike,
bad values are typed errors, the allocator is tuned once per process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_core
from cnnviz_core import cli, runtime_tuning
from cnnviz_core.store import local_backend


@pytest.fixture
def restore_threads():
    """The CLI sets the process's threads for good: put them back after the test."""
    before_torch, before = torch.get_num_threads(), runtime_tuning._threads
    before_env = os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(before_torch)
    runtime_tuning._threads = before
    if before_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before_env


@pytest.fixture
def small_folder(tmp_path):
    folder = tmp_path / "images" / "noise"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(tmp_path / "images")


def test_two_local_workers_each_take_their_share_of_the_cores(small_onnx_path, small_folder, tmp_path, monkeypatch):
    reports = []
    spawn = local_backend.run_chunks

    def recording(chunks, devices, setup, on_done, threads=None):  # runs in this process; the workers are spawned
        return spawn(chunks, devices, setup, lambda chunk, counts: reports.append(counts["threads"]), threads)

    monkeypatch.setattr(local_backend, "run_chunks", recording)
    cnnviz_core.run_dataset("occlusion", small_onnx_path, small_folder, out=tmp_path / "store", chunk_size=2,
                            workers=2, batch_size=2)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert len(reports) == 2  # two chunks of two images
    for report in reports:
        assert report["set"] == share and report["torch"] == share  # 1 each on a 2-core machine
        assert report["allocator_tuned"] is True  # glibc on Linux


def test_threads_argument_holds_for_the_run_and_is_restored(small_onnx_path, restore_threads):
    seen = []
    before = torch.get_num_threads()
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    cnnviz_core.run("occlusion", small_onnx_path, x, window=8, stride=8, threads=1,
                    on_batch=lambda *args: seen.append((torch.get_num_threads(), runtime_tuning.threads())))
    assert seen and all(entry == (1, 1) for entry in seen)
    assert torch.get_num_threads() == before and runtime_tuning.threads() is None
    with runtime_tuning.using_threads(1):  # an ONNX session made meanwhile gets the same count
        adapter = cnnviz_core.load_model(small_onnx_path)
        assert adapter._session.get_session_options().intra_op_num_threads == 1


def test_cli_threads_flag_is_honoured(small_onnx_path, tmp_path, capsys, restore_threads):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    code = cli.main(["run", "occlusion", "--model", small_onnx_path, "--image", str(image), "--window", "8",
                     "--out", str(tmp_path / "out"), "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert runtime_tuning.threads() == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_typed_errors(small_onnx_path, small_folder, tmp_path, capsys, value, restore_threads):
    code = cli.main(["run", "occlusion", "--model", small_onnx_path, "--image", "skimage:chelsea",
                     "--out", str(tmp_path / "out"), "--threads", value])
    assert code == 2 and "threads must be a whole number of at least 1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(cnnviz_core.InputError, match="threads must be"):
        cnnviz_core.run("occlusion", small_onnx_path, np.zeros((1, 3, 32, 32), np.float32), threads=value)
    with pytest.raises(cnnviz_core.InputError, match="threads must be"):
        cnnviz_core.run_dataset("occlusion", small_onnx_path, small_folder, out=tmp_path / "store", threads=value)
    assert not os.path.exists(tmp_path / "store")
    with pytest.raises(cnnviz_core.InputError, match="threads must be"):
        cnnviz_core.analyze(["top_patches"], small_onnx_path, small_folder, out=tmp_path / "pass", threads=value)
    assert not os.path.exists(tmp_path / "pass")


def test_allocator_is_tuned_once_and_can_be_left_alone():
    code = ("from cnnviz_core import runtime_tuning as r; import sys; "
            "print(r.tune_allocator(), r.tune_allocator(), 'torch' in sys.modules)")
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert tuned.stdout.split() == ["True", "True", "False"], tuned.stderr
    env = {**os.environ, "CNNVIZ_MALLOC": "default"}
    left = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert left.stdout.split() == ["False", "False", "False"], left.stderr
