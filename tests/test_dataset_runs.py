"""Dataset runs (cnnviz_core.run_dataset, `cnnviz run METHOD... --dataset`):
one store of Zarr maps plus a CSV index, equal bit for bit to in-memory runs
whatever the worker count, resumable after SIGKILL at chunk granularity,
refusing a store made with other weights, recording unreadable images, with
peak memory flat in the number of images. Ray runs: tests/test_ray_cluster.py."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import InputError, open_results, run_dataset
from cnnviz_core.cli import main as cli_main
from cnnviz_core.store import layout

from conftest import SMALL_CONFIG
from digits import trained_digits_net
from tiny_models import SmallConvNet

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["gradcam", "saliency"]


@pytest.fixture(scope="module")
def reference(digits, digits_folder, tmp_path_factory):
    """An uninterrupted single-process run of two methods sharing batches."""
    out = tmp_path_factory.mktemp("reference") / "store"
    return run_dataset(METHODS, digits, digits_folder, out=out, chunk_size=8, batch_size=4)


def stored(results, method: str) -> np.ndarray:
    return results.maps(method)[:]


def test_store_equals_the_in_memory_run_bit_for_bit(digits, digits_folder, reference):
    rows = reference.rows
    paths = [row["path"] for row in rows]
    assert len(rows) == 40 and [row["index"] for row in rows] == list(range(40))
    assert reference.complete and reference.summary == {"ok": 40, "skipped": 0, "error": 0}
    # labels from the class subfolders
    assert [row["label"] for row in rows] == [int(os.path.basename(os.path.dirname(p))) for p in paths]
    assert [row["label_name"] for row in rows] == [str(row["label"]) for row in rows]
    for method in METHODS:
        memory = cnnviz_core.run(method, digits, paths, batch_size=4)
        maps = stored(reference, method)
        assert maps.dtype == np.float32 and maps.shape == memory.maps.shape == (40, 8, 8)
        assert np.array_equal(maps, memory.maps)
        assert [row[f"{method}.class"] for row in rows] == memory.classes.tolist()
        assert np.array_equal(np.float32([row[f"{method}.score"] for row in rows]), memory.scores)
        assert np.array_equal(reference.map(method, paths[17]), memory.maps[17])
    # the record says what made the store
    key = reference.record["key"]
    assert key["weights"] == digits.weights_digest() and set(key["methods"]) == set(METHODS)
    assert (layout.done_chunks(reference.out)) == set(range(5))


def test_float16_store_and_a_glob_on_the_small_net(tmp_path):
    adapter = TorchAdapter(SmallConvNet(seed=3).eval(), "small_convnet", SMALL_CONFIG)
    rng = np.random.default_rng(1)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    half = run_dataset("gradcam", adapter, str(tmp_path / "img*.png"), out=tmp_path / "half", dtype="float16",
                       chunk_size=3, batch_size=2, target=1)
    paths = [row["path"] for row in half.rows]
    assert paths == sorted(str(tmp_path / f"img{i}.png") for i in range(7))
    memory = cnnviz_core.run("gradcam", adapter, paths, target=1, batch_size=2)
    maps = stored(half, "gradcam")
    assert maps.dtype == np.float16 and np.array_equal(maps, memory.maps.astype(np.float16))
    assert {row["class"] for row in half.rows} == {1}


def test_two_workers_write_the_same_store_as_one(digits, digits_folder, reference, tmp_path):
    two = run_dataset(METHODS, digits, digits_folder, out=tmp_path / "two", chunk_size=8, batch_size=4, workers=2)
    for method in METHODS:
        assert np.array_equal(stored(two, method), stored(reference, method))
    assert two.rows == reference.rows
    assert next(trained_digits_net().parameters()).device.type == "cpu"  # the user's model stayed where it was


def test_a_crashed_worker_stops_the_run_with_advice_and_a_rerun_continues(digits, digits_folder, reference, tmp_path):
    from dataset_run_child import dying_copy

    out = tmp_path / "crashed"
    with pytest.raises(cnnviz_core.CnnvizError, match="worker process died.*run the same command again"):
        run_dataset(METHODS, dying_copy(digits), digits_folder, out=out, chunk_size=8, batch_size=4, workers=2)
    assert not open_results(out).complete
    resumed = run_dataset(METHODS, digits, digits_folder, out=out, chunk_size=8, batch_size=4)
    assert resumed.rows == reference.rows
    assert np.array_equal(stored(resumed, "gradcam"), stored(reference, "gradcam"))


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_store(digits, digits_folder, reference, tmp_path):
    pickled = tmp_path / "adapter.pkl"
    pickled.write_bytes(pickle.dumps(digits))
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "dataset_run_child.py"), "slow-run", str(pickled),
                              digits_folder, str(out), "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(layout.done_chunks(str(out))) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    finished = layout.done_chunks(str(out))
    assert 2 <= len(finished) < 5, child.stderr.read().decode()[-2000:]
    assert not open_results(out).complete
    before = {c: os.stat(os.path.join(out, layout.INDEX_FOLDER, layout.chunk_name(c) + ".csv")).st_mtime_ns for c in finished}
    resumed = run_dataset(METHODS, digits, digits_folder, out=out, chunk_size=8, batch_size=4)
    after = {c: os.stat(os.path.join(out, layout.INDEX_FOLDER, layout.chunk_name(c) + ".csv")).st_mtime_ns for c in finished}
    assert after == before  # finished chunks were not computed again
    assert [row["index"] for row in resumed.rows] == list(range(40))  # every image exactly once
    assert resumed.rows == reference.rows
    for method in METHODS:
        assert np.array_equal(stored(resumed, method), stored(reference, method))


def test_changed_weights_file_never_resumes(digits, digits_folder, tmp_path, capsys):
    model_path = str(tmp_path / "digits.onnx")
    export_onnx(digits, model_path)
    listing = tmp_path / "images.txt"
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(digits_folder) for name in names)[:6]
    listing.write_text("".join(f"{p} {os.path.basename(os.path.dirname(p))}\n" for p in paths))
    out = str(tmp_path / "store")
    argv = ["run", "occlusion", "--model", model_path, "--dataset", str(listing), "--out", out,
            "--window", "4", "--stride", "2", "--chunk-size", "4"]
    assert cli_main(argv) == 0
    first = open_results(out)
    assert first.summary["ok"] == 6 and [row["label"] for row in first.rows] == [int(p.split(os.sep)[-2]) for p in paths]
    assert cli_main(argv) == 0  # the same command again: nothing left to do, same store
    assert np.array_equal(stored(open_results(out), "occlusion"), stored(first, "occlusion"))

    changed = copy.deepcopy(trained_digits_net())
    with torch.no_grad():
        changed.fc.bias[0] += 1.0
    export_onnx(TorchAdapter(changed, "digits_cnn", digits.config, labels=digits.labels), model_path)
    capsys.readouterr()
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert "weights" in error and "--overwrite" in error
    assert np.array_equal(stored(open_results(out), "occlusion"), stored(first, "occlusion"))  # untouched
    assert cli_main(argv + ["--overwrite"]) == 0
    fresh = open_results(out)
    assert fresh.record["key"]["weights"] != first.record["key"]["weights"] and fresh.summary["ok"] == 6
    with pytest.raises(InputError, match="methods or their parameters"):
        run_dataset({"occlusion": {"window": 2}}, model_path, str(listing), out=out, chunk_size=4)


def test_unreadable_images_are_recorded_and_the_run_goes_on(digits, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = np.full((8, 8, 3), 200, np.uint8)
    Image.fromarray(good).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"this is not a PNG")
    Image.fromarray(good).save(folder / "c.png")
    with pytest.warns(cnnviz_core.MethodWarning):
        results = run_dataset("saliency", digits, str(folder), out=tmp_path / "store", chunk_size=2)
    statuses = [(os.path.basename(r["path"]), r["status"]) for r in results.rows]
    assert statuses == [("a.png", "ok"), ("b.png", "skipped"), ("c.png", "ok")]
    assert results.rows[1]["error"] and results.summary == {"ok": 2, "skipped": 1, "error": 0}
    maps = stored(results, "saliency")
    assert np.isnan(maps[1]).all() and np.isfinite(maps[[0, 2]]).all()
    # a one-shot iterator with a bad item: streamed once, the bad item recorded in place
    items = iter([good, np.zeros((2, 2, 5), np.uint8), good, good])
    with pytest.warns(cnnviz_core.MethodWarning):
        streamed = run_dataset("saliency", digits, items, out=tmp_path / "stream", chunk_size=3)
    assert [r["status"] for r in streamed.rows] == ["ok", "skipped", "ok", "ok"]
    # the same image (in a batch of another size, so equal up to float rounding)
    assert np.allclose(stored(streamed, "saliency")[2], stored(results, "saliency")[0], rtol=1e-5, atol=1e-6)


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    rng = np.random.default_rng(0)
    folders = {}
    for count in (200, 2000):
        folder = tmp_path / f"images{count}"
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        folders[count] = folder
    children = {count: subprocess.Popen([sys.executable, os.path.join(HERE, "dataset_run_child.py"), "rss", str(folder),
                                         str(tmp_path / f"out{count}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for count, folder in folders.items()}
    peaks = {}
    for count, child in children.items():
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr.decode()[-2000:]
        peaks[count] = int(stdout.split()[-1])
    assert len(open_results(tmp_path / "out2000")) == 2000
    assert abs(peaks[2000] - peaks[200]) / peaks[200] < 0.10, peaks


def test_pandas_reads_the_index(reference):
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(os.path.join(reference.out, layout.INDEX))
    assert len(table) == 40 and table["status"].eq("ok").all()
    assert table["gradcam.class"].tolist() == [row["gradcam.class"] for row in reference.rows]
    assert isinstance(reference.index, pandas.DataFrame)


def test_bad_requests_are_typed_errors(digits, digits_folder, tmp_path):
    with pytest.raises(InputError, match="not an attribution method"):
        run_dataset("tsne", digits, digits_folder, out=tmp_path / "a")
    with pytest.raises(InputError, match="dtype"):
        run_dataset("gradcam", digits, digits_folder, out=tmp_path / "b", dtype="int8")
    with pytest.raises(InputError, match="list file or a glob"):
        run_dataset("gradcam", digits, str(tmp_path / "missing"), out=tmp_path / "c")
    with pytest.raises(InputError, match="no dataset run"):
        open_results(tmp_path)
