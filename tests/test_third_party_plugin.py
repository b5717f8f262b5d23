"""A third party's plugin, end to end: the worked examples in examples/ are
really pip-installed into folders of their own (offline when this
environment's setuptools can build them), found through their `cnnviz` entry
points and run from the CLI on the pretrained model. cnnviz-input-x-gradient
(a method written on the base class) is checked by hand in-process and picked
up by the conformance tests; cnnviz-hirescam (a method written on the public
toolkit's GradientCAM) is checked against Grad-CAM on the pretrained model.
Their own tests run too."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz_core
from cnnviz_core.registry import DISABLE_AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cnnviz-input-x-gradient"
DISTRIBUTION = "cnnviz-input-x-gradient"
PACKAGE = "cnnviz_input_x_gradient"
PLUGIN = "cnnviz_input_x_gradient"  # the entry-point name
METHOD = "input_x_gradient"
EGYPTIAN_CAT = 285


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (DISABLE_AUTOLOAD_ENV, "PYTHONPATH", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")}
    env.update(extra)
    return env


def setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


# setuptools >= 70.1 builds wheels without the `wheel` package, and >= 77 reads
# the example's SPDX `license = "MIT"`: with it in this environment, the
# install needs no network at all.
OFFLINE_SETUPTOOLS = (77, 0)


def install_example(example: Path, package: str, module: str, base: Path) -> Path:
    """The example pip-installed into a folder of its own, built from a copy of
    its source (so the build leaves nothing in the checkout).

    Offline when this environment's setuptools can build it: no index, no
    build isolation. A fresh venv's bundled setuptools is too old for that
    (3.11 bundles 65.5); pip then builds in isolation with setuptools from the
    package registry."""
    source, site = base / "source", base / "site"
    shutil.copytree(example, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    offline = setuptools_version() >= OFFLINE_SETUPTOOLS
    how = ["--no-build-isolation", "--no-index"] if offline else []
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *how, "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300, cwd=base,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1"),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (site / package / f"{module}.py").is_file()
    entry_points = next(site.glob(f"{package}-*.dist-info")) / "entry_points.txt"
    assert f"{package} = {package}.{module}" in entry_points.read_text()
    return site


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    return install_example(EXAMPLE, PACKAGE, "input_x_gradient", tmp_path_factory.mktemp("third_party"))


def cli(site: Path | None, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m cnnviz_core.cli ARGS` in a fresh interpreter; the plugin is
    importable only when ``site`` is on PYTHONPATH."""
    extra = {"PYTHONPATH": str(site)} if site is not None else {}
    return subprocess.run([sys.executable, "-m", "cnnviz_core.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=clean_env(**extra, **env))


def row(output: str, first_word: str) -> str:
    rows = [line for line in output.splitlines() if line.split() and line.split()[0] == first_word]
    assert len(rows) == 1, output
    return rows[0]


# -- (a) found through the entry point, listed by the CLI ---------------------------------
def test_cli_lists_the_installed_plugin_and_its_method(plugin_site, tmp_path):
    plugins = cli(plugin_site, "plugins", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    line = row(plugins.stdout, PLUGIN)
    assert f"[{DISTRIBUTION}]" in line and f"methods: {METHOD}" in line
    assert "FAILED" not in plugins.stdout
    assert "[cnnviz]" in row(plugins.stdout, "gradcam")  # the built-ins load beside it

    methods = cli(plugin_site, "methods", "--model", "efficientnet_lite0", cwd=tmp_path)
    assert methods.returncode == 0, methods.stderr
    line = row(methods.stdout, METHOD)
    assert "attribution" in line and "needs gradients" in line and " runs " in line
    assert "Input x gradient" in line  # the class docstring's first line

    help_text = cli(plugin_site, "run", METHOD, "--help", cwd=tmp_path)
    assert help_text.returncode == 0
    assert "--absolute, --no-absolute" in help_text.stdout and "--score {logit,prob}" in help_text.stdout


def test_plugin_absent_when_not_installed_or_autoload_disabled(plugin_site, tmp_path):
    not_installed = cli(None, "methods", cwd=tmp_path)
    assert not_installed.returncode == 0 and "gradcam" in not_installed.stdout
    assert METHOD not in not_installed.stdout

    disabled = cli(plugin_site, "plugins", cwd=tmp_path, **{DISABLE_AUTOLOAD_ENV: "1"})
    assert disabled.returncode == 0
    assert PLUGIN not in disabled.stdout and "gradcam" not in disabled.stdout
    unknown = cli(plugin_site, "run", METHOD, "--help", cwd=tmp_path, **{DISABLE_AUTOLOAD_ENV: "1"})
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


# -- (b) run from the CLI on the pretrained model --------------------------------------------
def test_cli_runs_the_plugin_on_the_pretrained_model(plugin_site, tmp_path):
    from skimage import data

    image = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(image)
    out = tmp_path / "out"
    completed = cli(plugin_site, "run", METHOD, "--model", "efficientnet_lite0", "--image", str(image),
                    "--target", "Egyptian cat", "--out", str(out), "--absolute", "--quiet",
                    cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert f"explained {EGYPTIAN_CAT} Egyptian cat" in completed.stdout

    stem = f"{METHOD}.class{EGYPTIAN_CAT}_Egyptian_cat"  # file names carry the target
    with Image.open(out / f"chelsea.{stem}.overlay.png") as overlay:
        assert overlay.size == (224, 224)
    for suffix in ("heatmap", "gradient"):
        assert (out / f"chelsea.{stem}.{suffix}.png").is_file()
    maps = np.load(out / f"{stem}.maps.npy")
    images = np.load(out / f"{stem}.images.npy")
    assert maps.shape == (1, 224, 224) and maps.dtype == np.float32
    assert images.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(np.load(out / f"chelsea.{stem}.map.npy"), maps[0])
    # --absolute: the map sums |x * grad| over channels; the image stays signed.
    np.testing.assert_allclose(maps, np.abs(images).sum(axis=1), rtol=1e-5, atol=1e-9)
    assert maps.min() >= 0 and maps.max() > 0 and (images < 0).any()
    assert np.load(out / f"{stem}.classes.npy").tolist() == [EGYPTIAN_CAT]

    record = json.loads((out / f"{stem}.json").read_text())
    assert record["method"] == METHOD and record["kind"] == "attribution"
    assert record["params"] == {"batch_size": None, "score": "logit", "absolute": True}
    assert record["model"]["name"] == "efficientnet_lite0"
    assert record["targets"] == [f"{EGYPTIAN_CAT} (Egyptian cat)"]
    assert record["explained"][0]["class"] == EGYPTIAN_CAT
    assert record["arrays"] == {"maps": [1, 224, 224], "images": [1, 3, 224, 224]}
    assert sorted(os.listdir(out)) == sorted(  # these files and nothing else (no temporaries left)
        [f"chelsea.{stem}.{s}.png" for s in ("heatmap", "overlay", "gradient")] + [f"chelsea.{stem}.map.npy"]
        + [f"{stem}.{a}.npy" for a in ("maps", "images", "classes", "scores")] + [f"{stem}.json"]
    )


# -- (c) in-process, through the public API, against a hand computation -------------------
class PixelLinear(nn.Module):
    """1x1 conv (3 -> 3 classes) then the spatial mean: logit_c = Σ_k W_ck mean(x_k) + b_c,
    so d logit_c / d x_k(p, q) = W_ck / (H·W) at every pixel."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [-0.5, 0.25, 2.0]]).view(3, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


@pytest.fixture
def plugin_registry(plugin_site, monkeypatch):
    """The process-wide registry rebuilt with the installed example on sys.path;
    afterwards the plain registry comes back (rebuilt lazily without it)."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(plugin_site))
    cnnviz_core.reset_registry()
    try:
        yield cnnviz_core.get_registry()
    finally:
        cnnviz_core.reset_registry(None)
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_run_through_the_public_api_matches_a_hand_computation(plugin_registry, plugin_site):
    method_class = plugin_registry.method(METHOD)
    assert Path(inspect.getfile(method_class)).is_relative_to(plugin_site)  # the pip-installed copy
    assert method_class.plugin == PLUGIN
    assert {p.name: p.distribution for p in plugin_registry.plugins()}[PLUGIN] == DISTRIBUTION
    assert METHOD in cnnviz_core.methods(kind="attribution")

    model = PixelLinear()
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 7)).astype(np.float32)
    weight, bias = model.conv.weight.detach().double().numpy()[:, :, 0, 0], model.conv.bias.detach().double().numpy()
    logits = x.astype(np.float64).mean(axis=(2, 3)) @ weight.T + bias
    classes = [1, int(np.argmax(logits[1]))]

    result = cnnviz_core.run(METHOD, model, x, target=[1, "top1"], device="cpu")

    expected = np.stack([x[b] * weight[c][:, None, None] / (5 * 7) for b, c in enumerate(classes)])
    assert result.method == METHOD and result.classes.tolist() == classes
    assert result.maps.shape == (2, 5, 7) and result.images.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(result.images, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(result.maps, expected.sum(axis=1), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(result.scores, logits[[0, 1], classes], rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())

    absolute = cnnviz_core.run(METHOD, model, x, target=[1, "top1"], device="cpu", absolute=True)
    np.testing.assert_allclose(absolute.maps, np.abs(expected).sum(axis=1), rtol=1e-5, atol=1e-8)
    with pytest.raises(cnnviz_core.InputError, match="absolute"):
        cnnviz_core.run(METHOD, model, x, device="cpu", absolut=True)  # misspelt: a typed error naming the parameters


def test_registry_forgets_the_plugin_afterwards():
    """Runs after the fixture above has been torn down: the plugin is gone."""
    assert METHOD not in cnnviz_core.methods()


# -- the example's own tests, against the installed copy ---------------------------------
def run_own_tests(example: Path, site: Path, cwd: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(example / "tests"), "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env=clean_env(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1"),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert " passed" in completed.stdout and "failed" not in completed.stdout


def test_the_examples_own_tests_pass(plugin_site, tmp_path):
    run_own_tests(EXAMPLE, plugin_site, tmp_path)


# -- registering is enough to be tested: the project's conformance tests pick it up ---------
def test_conformance_tests_run_the_installed_plugin(plugin_site, tmp_path):
    """The conformance tests are generated from the live registry, so with the
    example importable they run it too (torch: runs and undoes everything;
    ONNX: refused for lack of gradients)."""
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-q", "-rA", "-p", "no:cacheprovider", "-k", METHOD],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(plugin_site), PYTHONDONTWRITEBYTECODE="1"),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    passed = [line for line in completed.stdout.splitlines() if line.startswith("PASSED") and METHOD in line]
    assert any(f"{METHOD}-torch" in line for line in passed), completed.stdout
    assert any(f"{METHOD}-onnx" in line for line in passed), completed.stdout


# -- the second example: HiResCAM in a few lines on the public toolkit ----------------------
HIRESCAM = ROOT / "examples" / "cnnviz-hirescam"


@pytest.fixture(scope="session")
def hirescam_site(tmp_path_factory) -> Path:
    return install_example(HIRESCAM, "cnnviz_hirescam", "hirescam", tmp_path_factory.mktemp("hirescam"))


def test_hirescam_is_a_few_lines_on_the_public_toolkit():
    """The method code (the source without its docstrings, comments and blank
    lines) fits in 30 lines and imports only the public API."""
    import ast

    source = (HIRESCAM / "src" / "cnnviz_hirescam" / "hirescam.py").read_text()
    tree = ast.parse(source)
    docstrings = {number for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node)
                  for number in range(node.body[0].lineno, node.body[0].end_lineno + 1)}
    code = [line for number, line in enumerate(source.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#") and number not in docstrings]
    assert len(code) <= 30, "\n".join(code)
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "cnnviz_core", "cnnviz_core.toolkit"}


def test_cli_runs_hirescam_and_it_equals_gradcam_where_the_gradient_is_constant(hirescam_site, tmp_path, photos, lite0):
    """On the pretrained model's default layer (bn2, its ReLU6 included, then
    global average pooling and the linear classifier) ∂y/∂A_k is the same at
    every position, so HiResCAM equals Grad-CAM there; the map peaks on the cat."""
    from conftest import in_box

    plugins = cli(hirescam_site, "plugins", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    assert "[cnnviz-hirescam]" in row(plugins.stdout, "cnnviz_hirescam") and "methods: hirescam" in plugins.stdout

    out = tmp_path / "out"
    completed = cli(hirescam_site, "run", "hirescam", "--model", "efficientnet_lite0", "--image", photos["cat_on_grey"],
                    "--target", "Egyptian cat", "--out", str(out), "--quiet", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    maps = np.load(out / "hirescam.class285_Egyptian_cat.maps.npy")  # file names carry the target
    assert maps.shape == (1, 224, 224) and maps.min() >= 0 and in_box(maps[0])
    assert json.loads((out / "hirescam.class285_Egyptian_cat.json").read_text())["params"]["layer"] is None  # the default layer

    gradcam = cnnviz_core.run("gradcam", lite0, [photos["cat_on_grey"]], target="Egyptian cat")
    np.testing.assert_allclose(maps, gradcam.maps, rtol=1e-4, atol=1e-6 * float(gradcam.maps.max()))


def test_hirescam_own_tests_pass(hirescam_site, tmp_path):
    run_own_tests(HIRESCAM, hirescam_site, tmp_path)
