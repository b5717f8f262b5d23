"""The sanity, robustness, localization and complexity metrics through
``cnnviz evaluate`` end to end: a gradient-free method on an ONNX model
(every one of these metrics runs there), boxes given with --annotations,
references scored beside the method, and a refusal that names the way out."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cnnviz_core.cli import main as cli_main

METRICS = ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank", "sparseness", "complexity",
           "max_sensitivity", "avg_sensitivity", "random_logit", "model_randomization"]


def test_cnnviz_evaluate_runs_every_metric_on_an_onnx_model(small_onnx_path, tmp_path, capsys):
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[16:48, 32:64] = 255
    Image.fromarray(pixels).save(tmp_path / "square.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"square.png": [[32, 16, 64, 48]]}))
    out = tmp_path / "out"
    code = cli_main(["evaluate", "--model", small_onnx_path, "--methods", "occlusion", "--metrics", *METRICS,
                     "--image", str(tmp_path / "square.png"), "--annotations", str(tmp_path / "boxes.json"),
                     "--set", "occlusion.window=8", "--set", "occlusion.stride=8",
                     "--set", "max_sensitivity.samples=2", "--set", "avg_sensitivity.samples=2",
                     "--set", "model_randomization.layers=2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(out / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = {(row["method"], row["metric"]) for row in rows}
    assert {("occlusion", metric) for metric in METRICS} <= scored
    # the model-free edge detector is the sanity checks' reference: randomization cannot touch it
    sobel = next(row for row in rows if row["method"] == "reference:sobel" and row["metric"] == "model_randomization")
    assert float(sobel["mean"]) == pytest.approx(1.0)
    uniform = next(row for row in rows if row["method"] == "reference:uniform" and row["metric"] == "relevance_mass")
    assert float(uniform["mean"]) == pytest.approx(128 / 1024)  # the object's share of the 32 x 32 input


def test_localization_without_annotations_is_refused_with_the_way_out(small_onnx_path, tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    code = cli_main(["evaluate", "--model", small_onnx_path, "--methods", "occlusion", "--metrics", "pointing_game",
                     "--image", str(tmp_path / "plain.png"), "--set", "occlusion.window=8", "--set", "occlusion.stride=8",
                     "--no-references", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "plain.mask.png" in capsys.readouterr().err


def test_randomizing_a_gradient_method_on_onnx_is_refused_before_any_work(small_onnx_path, tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    code = cli_main(["evaluate", "--model", small_onnx_path, "--methods", "gradcam", "--metrics", "model_randomization",
                     "--image", str(tmp_path / "plain.png"), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "gradients" in capsys.readouterr().err
    assert not (tmp_path / "out" / "leaderboard.csv").exists()
