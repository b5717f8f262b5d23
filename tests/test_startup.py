"""Start-up stays light (issue 11): listing methods and printing help import no
torch, timm, ONNX, scikit-learn, SciPy or matplotlib, although every built-in
plugin module is imported; a run pays only for what it uses. Each check runs
the CLI in a fresh process and reads its ``sys.modules`` afterwards: a property,
not a timing (the timings are benchmarks/bench_startup.py's)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm", "onnxruntime", "onnx", "sklearn", "scipy", "matplotlib")

# Runs the CLI, then prints what it imported as the last line of stdout.
CLI_CHILD = """
import json, sys
from cnnviz_core.cli import main
code = main(sys.argv[1:])
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [ep for ep in importlib.metadata.entry_points(group="cnnviz") if ep.dist is not None and ep.dist.name == "cnnviz"]


def child_env() -> dict[str, str]:
    """Only cnnviz's own plugins: a third-party plugin installed next to it may
    import what it likes, and is not what these tests check."""
    others = [ep.name for ep in importlib.metadata.entry_points(group="cnnviz") if ep.dist is None or ep.dist.name != "cnnviz"]
    return {**os.environ, "CNNVIZ_DISABLE_PLUGINS": ",".join(others), "CNNVIZ_PROGRESS": "0"}


def run_python(code: str, *args: str, cwd=None) -> tuple[str, dict]:
    completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                               env=child_env(), cwd=cwd, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    *output, last = completed.stdout.rstrip("\n").split("\n")
    return "\n".join(output), json.loads(last)


def heavy_in(modules) -> list[str]:
    return sorted({name.split(".")[0] for name in modules} & set(HEAVY))


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["models"], ["plugins"], ["run", "gradcam", "--help"]],
                         ids=" ".join)
def test_listing_and_help_import_nothing_heavy(argv, tmp_path):
    output, child = run_python(CLI_CHILD, *argv, cwd=tmp_path)
    assert child["code"] == 0, output
    assert heavy_in(child["modules"]) == []
    # light because the plugin modules are, not because they were skipped
    builtin_modules = {ep.value.split(":")[0] for ep in builtin_entry_points()}
    assert len(builtin_modules) >= 20 and builtin_modules <= set(child["modules"])


def test_methods_lists_every_builtin_method_without_torch(tmp_path):
    output, child = run_python(CLI_CHILD, "methods", cwd=tmp_path)
    listed = {line.split()[0] for line in output.splitlines() if line.strip()}
    for name in ("gradcam", "guided_backprop", "occlusion", "score_cam", "adversarial", "style_transfer", "tsne", "pruning"):
        assert name in listed
    assert "torch" not in child["modules"]


def test_toolkit_subclasses_need_no_torch_until_a_rule_is_used():
    code = """
import json, sys
import cnnviz_core.toolkit as toolkit
from cnnviz_core.toolkit import GradientCAM, InputGradient, LayerFeatures, class_scores, gaussian_blur

class Weighted(GradientCAM):
    name = "weighted"

class Guided(InputGradient):
    name = "guided"
    rule = "guided"

before = sorted(sys.modules)
rule = toolkit.backward_rule  # backward_rules is built from torch types: loads torch
print(json.dumps({"before": before, "after": sorted(sys.modules), "all": toolkit.__all__, "dir": dir(toolkit),
                  "rule_module": rule.__module__}))
"""
    _, child = run_python(code)
    assert heavy_in(child["before"]) == []
    assert "torch" in child["after"] and child["rule_module"] == "cnnviz_core.toolkit.backward_rules"
    assert set(child["all"]) <= set(child["dir"])


def test_every_toolkit_name_resolves_to_its_definition():
    import cnnviz_core.toolkit as toolkit

    for name in toolkit.__all__:
        value = getattr(toolkit, name)
        assert value.__name__ == name and value.__module__.startswith("cnnviz_core.toolkit.")
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        toolkit.not_there  # noqa: B018


def test_torch_adapter_answers_can_load_without_importing_torch():
    code = """
import json, sys
from cnnviz_adapters.torch_adapter import TorchAdapter
answers = [TorchAdapter.can_load("model.onnx"), TorchAdapter.can_load("timm:resnet18"), TorchAdapter.can_load(object())]
print(json.dumps({"answers": answers, "modules": sorted(sys.modules)}))
"""
    _, child = run_python(code)
    assert child["answers"] == [False, True, False]
    assert heavy_in(child["modules"]) == []


def test_onnx_model_question_loads_the_runtime_but_not_torch(small_onnx_path, tmp_path):
    output, child = run_python(CLI_CHILD, "methods", "--model", small_onnx_path, cwd=tmp_path)
    assert child["code"] == 0 and "gradcam" in output
    assert "onnxruntime" in child["modules"]
    assert heavy_in(child["modules"]) == ["onnxruntime"]


@pytest.mark.slow
def test_gradcam_run_on_a_torch_model_imports_no_onnx_runtime(photos, tmp_path):
    output, child = run_python(CLI_CHILD, "run", "gradcam", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                               "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert child["code"] == 0 and "Egyptian cat" in output
    loaded = heavy_in(child["modules"])
    assert "torch" in loaded and "timm" in loaded  # what the model needs, so the check sees imports
    assert not {"onnxruntime", "onnx", "sklearn", "scipy", "matplotlib"} & set(loaded)
