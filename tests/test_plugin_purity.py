"""The built-in plugins are written exactly as a third party must write theirs:
every module under plugins/ imports only the public cnnviz_core API (the names
in ``cnnviz_core.__all__`` and in ``cnnviz_core.toolkit.__all__``), torch,
numpy and other libraries — never cnnviz_adapters, never a private
cnnviz_core module, never another plugin. Within a plugin, a method package's
own modules and its family's ``support`` package are allowed.

The modules are read with ``ast``, not imported, so every import counts,
including those inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cnnviz_core

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
PUBLIC_CORE = set(cnnviz_core.__all__)


def public_toolkit() -> set[str]:
    import cnnviz_core.toolkit

    return set(cnnviz_core.toolkit.__all__)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PLUGINS).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["cnnviz_plugins", *parts])


def home_packages(path: Path) -> list[str]:
    """What a module may import from cnnviz_plugins: its family's support
    package, and, inside a method package (plugins/FAMILY/PACKAGE/...), that
    package. A top-level family module's home is the family's support only."""
    parts = path.relative_to(PLUGINS).parts
    if len(parts) == 1:  # plugins/__init__.py
        return ["cnnviz_plugins"]
    family = f"cnnviz_plugins.{parts[0]}"
    homes = [f"{family}.support"]
    if len(parts) >= 3:  # inside a package of the family (a method package or support itself)
        homes.append(f"{family}.{parts[1]}")
    if parts[-1] == "__init__.py" and len(parts) == 2:  # the family's own __init__
        homes.append(family)
    return homes


def resolve(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    homes, toolkit = home_packages(path), public_toolkit()
    found = []

    def check_module(module: str, line: int, names: list[str] | None = None) -> None:
        top = module.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line}"
        if top == "cnnviz_adapters":
            found.append(f"{where} imports {module}: adapters are reached through the adapter object only")
        elif top == "cnnviz_plugins":
            if not any(module == home or module.startswith(home + ".") for home in homes):
                found.append(f"{where} imports {module}: another plugin's module (allowed here: {', '.join(homes)})")
        elif module == "cnnviz_core":
            for name in names or []:
                if name not in PUBLIC_CORE:
                    found.append(f"{where} imports cnnviz_core.{name}, which is not in cnnviz_core.__all__")
        elif module == "cnnviz_core.toolkit":
            for name in names or []:
                if name not in toolkit:
                    found.append(f"{where} imports cnnviz_core.toolkit.{name}, which is not in its __all__")
        elif top == "cnnviz_core":
            found.append(f"{where} imports {module}: a private cnnviz_core module (use the names of cnnviz_core "
                         "or cnnviz_core.toolkit)")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            check_module(resolve(node, path), node.lineno, [alias.name for alias in node.names])
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cnnviz_core":
            if node.attr not in PUBLIC_CORE and node.attr != "toolkit":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses cnnviz_core.{node.attr}, which is not public")
    return found


MODULES = sorted(PLUGINS.rglob("*.py"))


def test_every_plugin_module_is_checked():
    names = {module_name(p) for p in MODULES}
    assert {"cnnviz_plugins.attribution.gradcam", "cnnviz_plugins.synthesis.support.objectives",
            "cnnviz_plugins.attribution.occlusion.method"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugin_imports_only_the_public_api(path):
    assert not violations(path), "\n".join(violations(path))


def test_the_checker_catches_each_kind_of_violation(tmp_path, monkeypatch):
    """Each rule fires on a module that breaks it, and stays quiet on one that keeps it."""
    family = tmp_path / "plugins" / "attribution"
    (family / "support").mkdir(parents=True)
    (family / "engine").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "PLUGINS", tmp_path / "plugins")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = family / "bad.py"
    bad.write_text(
        "from cnnviz_adapters.torch_adapter import TorchAdapter\n"
        "from cnnviz_core.targets import resolve_classes\n"
        "from cnnviz_core import ModelAdapterInternals\n"
        "from cnnviz_core.toolkit.hooks import forward_hooks\n"
        "from cnnviz_plugins.attribution.gradcam import GradCAM\n"
        "from cnnviz_plugins.synthesis.support import objectives\n"
        "from .engine import run\n"
        "import cnnviz_core\n"
        "def f():\n"
        "    import cnnviz_core.registry\n"
        "    return cnnviz_core.adapter.select_scores\n"
    )
    found = violations(bad)
    for expected in ["cnnviz_adapters.torch_adapter", "cnnviz_core.targets", "cnnviz_core.ModelAdapterInternals",
                     "cnnviz_core.toolkit.hooks", "cnnviz_plugins.attribution.gradcam",
                     "cnnviz_plugins.synthesis.support", "cnnviz_plugins.attribution.engine", "cnnviz_core.registry",
                     "cnnviz_core.adapter"]:
        assert any(expected in line for line in found), (expected, found)
    assert len(found) == 9, found
    good = family / "engine" / "method.py"
    good.write_text(
        "import torch\nimport cnnviz_core\n"
        "from cnnviz_core import hookimpl, resolve_classes, render\n"
        "from cnnviz_core.toolkit import GradientCAM, class_scores\n"
        "from cnnviz_plugins.attribution.engine.graph import trace\n"
        "from .graph import trace\n"
        "from ..support.blur import blur\n"
        "x = cnnviz_core.toolkit\n"
    )
    assert violations(good) == []


def test_importing_the_core_does_not_import_torch():
    code = "import sys, cnnviz_core; cnnviz_core.validate_targets; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"
