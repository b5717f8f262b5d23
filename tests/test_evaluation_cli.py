"""`cnnviz evaluate` end to end on a small ONNX model (32 px), and resuming:
a rerun of the same command computes nothing again, a changed parameter
recomputes only what it changes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core.cli import main as cli_main

from conftest import small_torch_adapter


def run_cli(capsys, *argv):
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_leaderboard(capsys, tmp_path, photos, small_onnx_path):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", small_onnx_path, "--methods", "rise", "occlusion", "--metrics", "deletion", "insertion",
            "--set", "deletion.steps=8", "--set", "insertion.steps=8", "--set", "rise.masks=64", "--set", "occlusion.window=8",
            "--image", photos["chelsea"], photos["coffee"], "--out", out, "--batch-size", "1"]
    code, stdout, stderr = run_cli(capsys, *argv)
    assert code == 0, stderr
    assert "deletion ↓" in stdout and "insertion ↑" in stdout and "reference:sobel" in stdout
    for name in ("leaderboard.csv", "scores.csv", "leaderboard.png", "leaderboard.html", "curves.deletion.png",
                 "curves.insertion.png", "evaluation.json"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "leaderboard.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    methods = {row["method"] for row in rows}
    assert methods == {"rise", "occlusion", "reference:random", "reference:uniform", "reference:sobel"}
    assert all(0 <= float(row["mean"]) <= 1 and row["n"] == "2" for row in rows)  # AUCs of probabilities, 2 images
    with open(out / "scores.csv", newline="") as stream:
        per_image = list(csv.DictReader(stream))
    assert len(per_image) == 5 * 2 * 2  # (2 methods + 3 references) x 2 metrics x 2 images
    page = (out / "leaderboard.html").read_text()
    assert "curves.deletion.png" in page and "<table>" in page and "rise" in page
    assert stderr.count("(kept from an earlier run)") == 0

    # the same command again: every chunk of work is read back
    code, again, stderr = run_cli(capsys, *argv)
    assert code == 0 and again == stdout
    assert stderr.count("(kept from an earlier run)") == stderr.count(" x ") == 5 * 2 * 2
    # a changed parameter recomputes the metric it belongs to, never reuses it
    changed = [a if a != "deletion.steps=8" else "deletion.steps=4" for a in argv]
    code, _, stderr = run_cli(capsys, *changed)
    kept = [line for line in stderr.splitlines() if "kept from an earlier run" in line]
    assert code == 0 and len(kept) == 5 * 2 and all(" x insertion" in line for line in kept)


def test_cli_refuses_bad_requests_before_any_work(capsys, tmp_path, photos, small_onnx_path):
    base = ["evaluate", "--model", small_onnx_path, "--image", photos["chelsea"], "--out", tmp_path / "never"]
    cases = [
        (["--methods", "deletion", "--metrics", "insertion"], "deletion is a metric"),
        (["--methods", "rise", "--metrics", "rise"], "rise is a attribution method, not a metric"),
        (["--methods", "gradcam", "--metrics", "deletion"], "needs"),  # gradients: not on an ONNX model
        (["--methods", "rise", "--metrics", "deletion", "--set", "deletion.steps"], "NAME.PARAM=VALUE"),
        (["--methods", "rise", "--metrics", "deletion", "--set", "insertion.steps=3"], "none of the methods or metrics"),
        (["--methods", "rise", "--metrics", "deletion", "--set", "deletion.steps=0"], "at least 1"),
    ]
    for extra, message in cases:
        code, _, stderr = run_cli(capsys, *base, *extra)
        assert code == 2 and message in stderr and "Traceback" not in stderr, (extra, stderr)
    assert not (tmp_path / "never").exists()


def test_a_rerun_runs_no_method_and_no_metric(tmp_path, photos, monkeypatch):
    model = small_torch_adapter()
    args = dict(methods={"saliency": {}}, metrics={"deletion": {"steps": 4}, "faithfulness_correlation": {"runs": 4, "subset": 8}},
                images=[photos["chelsea"], photos["coffee"], photos["astronaut"]], out=tmp_path / "eval", batch_size=2)
    first = cnnviz_core.evaluate(model, **args)
    assert first.reused == 0

    def never(*_, **__):
        raise AssertionError("finished work was computed again")

    registry = cnnviz_core.get_registry()
    monkeypatch.setattr(registry.method("saliency"), "attribute", never)
    for name in ("deletion", "faithfulness_correlation"):
        monkeypatch.setattr(registry.method(name), "evaluate", never)
    second = cnnviz_core.evaluate(model, **args)
    # 2 chunks x (saliency x 2 metrics + deletion's 3 references + faithfulness correlation's 2)
    assert second.reused == 2 * (2 + 3 + 2)
    for key, result in first.results.items():
        np.testing.assert_array_equal(second.results[key].scores, result.scores)
    with pytest.raises(AssertionError, match="computed again"):  # other images are new work
        cnnviz_core.evaluate(model, **{**args, "images": [photos["cat_on_grey"]]})


def test_maps_are_read_from_a_dataset_run(tmp_path, photos, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        shutil.copy(photos[name], folder / f"{name}.png")
    model = small_torch_adapter()
    cnnviz_core.run_dataset(["saliency"], model, str(folder), out=tmp_path / "store", chunk_size=2)
    metrics = {"deletion": {"steps": 4}}
    computed = cnnviz_core.evaluate(model, ["saliency"], metrics, dataset=str(folder), references=False, batch_size=2)

    def never(*_, **__):
        raise AssertionError("the stored maps were computed again")

    monkeypatch.setattr(cnnviz_core.get_registry().method("saliency"), "attribute", never)
    read = cnnviz_core.evaluate(model, ["saliency"], metrics, maps_from=tmp_path / "store", references=False, batch_size=2)
    np.testing.assert_allclose(read.result("saliency", "deletion").scores, computed.result("saliency", "deletion").scores,
                               atol=1e-6)
    with pytest.raises(cnnviz_core.InputError, match="drop the parameters"):
        cnnviz_core.evaluate(model, {"saliency": {"score": "prob"}}, metrics, maps_from=tmp_path / "store")
    with pytest.raises(cnnviz_core.InputError, match="another model"):
        cnnviz_core.evaluate(small_torch_adapter(seed=1), ["saliency"], metrics, maps_from=tmp_path / "store")
