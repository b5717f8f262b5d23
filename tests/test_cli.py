"""The command line end to end: exit codes, files written, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import cnnviz_core
import pytest

from cnnviz_core.cli import main
from conftest import output_files


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_gradcam_writes_pngs_arrays_and_record(capsys, photos, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", "gradcam", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                              photos["coffee"], "--out", out, "--quiet")
    assert code == 0
    assert "Egyptian cat" in stdout and "espresso" in stdout
    files = output_files(out)
    for name in ("chelsea", "coffee"):
        for suffix in ("overlay.png", "heatmap.png", "map.npy"):
            assert f"{name}.gradcam.{suffix}" in files
    maps = np.load(out / "gradcam.maps.npy")
    assert maps.shape == (2, 224, 224) and maps.dtype == np.float32
    record = json.loads((out / "gradcam.json").read_text())
    assert record["model"]["name"] == "efficientnet_lite0" and record["params"]["layer"] is None
    assert [e["label"] for e in record["explained"]] == ["Egyptian cat", "espresso"]
    assert not [f for f in files if f.startswith(".tmp-")]


def test_run_occlusion_on_onnx_with_method_flags(capsys, photos, lite0_onnx, tmp_path):
    out = tmp_path / "occ"
    code, _, _ = run_cli(capsys, "run", "occlusion", "--model", lite0_onnx, "--image", photos["chelsea"],
                         "--target", "Egyptian cat", "--window", "112", "--stride", "56", "--baseline", "0.5",
                         "--out", out, "--quiet")
    assert code == 0
    record = json.loads((out / "occlusion.class285_Egyptian_cat.json").read_text())  # file names carry the target
    assert record["params"]["window"] == 112 and record["params"]["baseline"] == 0.5
    assert record["model"]["adapter"] == "onnx"
    assert np.load(out / "occlusion.class285_Egyptian_cat.grid.npy").shape == (1, 3, 3)


def test_gradcam_on_onnx_exits_2_naming_the_capability(capsys, photos, lite0_onnx, tmp_path):
    out = tmp_path / "never"
    code, stdout, stderr = run_cli(capsys, "run", "gradcam", "--model", lite0_onnx, "--image", photos["chelsea"], "--out", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "gradients" in lines[0] and "occlusion" in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "blocks.99"], "no layer 'blocks.99'"),
        (["--target", "1000"], "out of range"),
        (["--target", "flying saucer"], "unknown label"),
        (["--score", "probability"], "invalid choice"),
        (["--device", "cuda:3"], "not available"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, photos, tmp_path, extra, message):
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "run", "gradcam", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                              "--out", out, *extra)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert output_files(out) == []


def test_bad_images_exit_2_naming_the_file(capsys, photos, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(photos["coffee"], "rb").read()[:5000])
    for path, message in [(truncated, "truncated.png"), (tmp_path / "missing.png", "no such file")]:
        out = tmp_path / "out"
        code, _, stderr = run_cli(capsys, "run", "occlusion", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                                  path, "--out", out)
        assert code == 2 and message in stderr
        assert output_files(out) == []


def test_unknown_method_and_missing_flags_exit_2(capsys, photos, tmp_path):
    assert run_cli(capsys, "run", "no_such_method", "--model", "efficientnet_lite0")[0] == 2
    assert run_cli(capsys, "run", "gradcam", "--image", photos["chelsea"], "--out", tmp_path)[0] == 2
    code, _, stderr = run_cli(capsys, "run", "gradcam", "--model", "timm:nonexistent_net", "--image", photos["chelsea"],
                              "--out", tmp_path / "x")
    assert code == 2 and "timm has no model" in stderr


def test_methods_lists_capabilities_per_model(capsys, lite0_onnx):
    code, stdout, _ = run_cli(capsys, "methods")
    assert code == 0 and "gradcam" in stdout and "occlusion" in stdout
    code, stdout, _ = run_cli(capsys, "methods", "--model", lite0_onnx)
    lines = {line.split()[0]: line for line in stdout.splitlines()}
    assert "missing:" in lines["gradcam"] and "gradients" in lines["gradcam"].split("missing:")[1]
    assert "runs" in lines["occlusion"]
    assert "runs" in lines["cam"]  # activations + weights: the ONNX adapter has both


def test_models_plugins_and_layers(capsys):
    code, stdout, _ = run_cli(capsys, "models")
    assert code == 0 and "efficientnet_lite0" in stdout
    code, stdout, _ = run_cli(capsys, "models", "resnet*")
    assert code == 0 and "efficientnet_lite0" not in stdout
    code, stdout, _ = run_cli(capsys, "models", "--layers", "efficientnet_lite0")
    lines = {line.split()[0]: line for line in stdout.splitlines() if line.strip()}
    assert code == 0 and lines["bn2"].endswith("(default target layer)") and "conv_stem" in lines
    code, stdout, _ = run_cli(capsys, "plugins")
    assert code == 0
    for plugin in ("gradcam", "occlusion", "torch_adapter", "onnx_adapter", "builtin_models"):
        assert any(line.startswith(plugin) and "[cnnviz]" in line for line in stdout.splitlines()), plugin


def test_method_help_comes_from_its_parameters(capsys):
    assert main(["run", "occlusion", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--window" in help_text and "window size in input pixels" in help_text and "(default: 16)" in help_text


def test_export_onnx_writes_model_and_sidecar(capsys, tmp_path):
    from conftest import small_torch_adapter  # noqa: F401 - the timm path is what the CLI exports

    path = tmp_path / "r18.onnx"
    code, stdout, _ = run_cli(capsys, "export-onnx", "timm:resnet18", path)
    assert code == 0 and path.exists() and (tmp_path / "r18.onnx.json").exists()
    assert json.loads((tmp_path / "r18.onnx.json").read_text())["config"]["input_size"] == [224, 224]
    code, _, stderr = run_cli(capsys, "export-onnx", "timm:resnet18", tmp_path / "r18.txt")
    assert code == 2 and ".onnx" in stderr


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "cnnviz")
    completed = subprocess.run([script, "methods"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "gradcam" in completed.stdout
    completed = subprocess.run([script, "run", "gradcam", "--model", "efficientnet_lite0", "--image", "/nonexistent.png",
                                "--out", "/tmp/never-written"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr


def test_demo_plans_every_method_and_runs_each_kind_on_torch_and_onnx(capsys, tmp_path, lite0, lite0_onnx):
    from cnnviz_core.demo import demo_plan
    from cnnviz_core.registry import get_registry

    methods = get_registry().methods
    plan = demo_plan({"torch": lite0, "onnx": cnnviz_core.load_model(lite0_onnx)})
    # every method appears in the demo, but for those the built-in classifier cannot run: a detector's, a transformer's
    shown = {n for n, c in methods.items() if c.kind != "metric" and c.explains != "detection" and not c.unsupported(lite0)}
    assert {name for name, _ in plan} == shown and {"gradcam", "occlusion", "tsne", "class_model"} <= shown
    assert {("occlusion", "onnx"), ("rise", "onnx")} <= set(plan) and ("gradcam", "onnx") not in plan
    # running all of them takes minutes: the test runs one quick method of each kind, on both models
    quick = ["gradcam", "rise"] + [min(n for n, c in methods.items() if c.kind == kind)
                                    for kind in ("synthesis", "analysis") if any(c.kind == kind for c in methods.values())]
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(capsys, "demo", "--out", out, "--only", *quick)
    assert code == 0 and "index.html" in stdout
    page = (out / "index.html").read_text()
    assert "torch/chelsea.gradcam.overlay.png" in page and (out / "torch" / "coffee.gradcam.overlay.png").exists()
    assert "onnx/chelsea.rise.overlay.png" in page and (out / "onnx" / "coffee.rise.overlay.png").exists()
    for name in quick[2:]:
        assert list(out.glob(f"*/{name}*.json"))  # on torch or its ONNX copy; tagged with the demo's target where it has one
    assert "Egyptian cat" in page and "espresso" in page and "Failed" not in page
