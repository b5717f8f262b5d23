"""pyproject.toml declares what the code imports: every module of
cnnviz_core, adapters/ and plugins/ imports, each third-party import (at top
level or inside a function) is a declared dependency — an optional one only
when the import is guarded by ``except ImportError`` — and every declared
dependency is used, installed here and at least at the floor the code needs."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cnnviz_core": ROOT / "cnnviz_core", "cnnviz_adapters": ROOT / "adapters", "cnnviz_plugins": ROOT / "plugins"}
# Import names whose distribution is not installed here, so importlib.metadata
# cannot map them (other platforms' wheels, optional extras).
NOT_INSTALLED = {"onnxruntime": {"onnxruntime", "onnxruntime-gpu"}, "pynvml": {"nvidia-ml-py"}}
# API a floor must cover: (distribution, floor, file, text that uses the API).
FLOORS = [
    ("scikit-learn", "1.5", "plugins/analysis/tsne.py", "max_iter="),  # TSNE's n_iter became max_iter in 1.5
    ("torch", "2.5", "adapters/onnx_export.py", "dynamo="),  # torch.onnx.export's dynamo argument
]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(optional: bool) -> set[str]:
    requirements = list(project()["dependencies"])
    if optional:
        requirements += [r for extra in project().get("optional-dependencies", {}).values() for r in extra]
    return {normalized(Requirement(r).name) for r in requirements}


def source_files():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def _guards_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
                                       for n in names)


def third_party_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level import name, line, guarded) for each absolute import."""
    tree = ast.parse(path.read_text(), str(path))
    guarded_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_guards_import_error(h) for h in node.handlers):
            for statement in node.body:
                guarded_lines.update(range(statement.lineno, statement.end_lineno + 1))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                continue
            found.append((top, node.lineno, node.lineno in guarded_lines))
    return found


@lru_cache(maxsize=1)
def installed_packages() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed distribution: once


def distributions_of(import_name: str) -> set[str]:
    mapped = {normalized(d) for d in installed_packages().get(import_name, ())}
    return mapped | NOT_INSTALLED.get(import_name, set())


ALL_IMPORTS = [(module, top, line, guarded) for module, path in source_files() for top, line, guarded in third_party_imports(path)]
BY_NAME: dict[str, list[tuple[str, int, bool]]] = {}
for _module, _top, _line, _guarded in ALL_IMPORTS:
    BY_NAME.setdefault(_top, []).append((_module, _line, _guarded))


@pytest.mark.parametrize("module", [module for module, _ in source_files()])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_scan_sees_imports_inside_functions():
    """The lazy imports (scipy in an attack, sklearn in t-SNE) are found too."""
    assert {"torch", "numpy", "pluggy", "tqdm", "scipy", "sklearn", "threadpoolctl", "safetensors"} <= set(BY_NAME)


@pytest.mark.parametrize("top", sorted(BY_NAME))
def test_third_party_import_is_declared(top):
    distributions = distributions_of(top)
    places = ", ".join(f"{module}:{line}" for module, line, _ in BY_NAME[top][:3])
    assert distributions, f"{places} import {top!r}, which maps to no known distribution"
    unguarded = [f"{module}:{line}" for module, line, guarded in BY_NAME[top] if not guarded]
    if unguarded:
        assert distributions & declared(optional=False), \
            f"{', '.join(unguarded[:3])} import {top!r} ({', '.join(sorted(distributions))}) unguarded: add it to [project] dependencies"
    else:
        assert distributions & declared(optional=True), \
            f"{places} import {top!r} ({', '.join(sorted(distributions))}): declare it, at least in an optional extra"


def test_every_declared_dependency_is_used_installed_and_at_its_floor():
    used = {d for _, top, _, _ in ALL_IMPORTS for d in distributions_of(top)}
    for text in project()["dependencies"]:
        requirement = Requirement(text)
        name = normalized(requirement.name)
        assert name in used, f"{requirement.name} is declared but nothing imports it"
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # another platform's package
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed} violates {text}"


@pytest.mark.parametrize("distribution, floor, path, text", FLOORS)
def test_floor_covers_the_api_the_code_uses(distribution, floor, path, text):
    assert text in (ROOT / path).read_text(), f"{path} no longer uses {text}; update FLOORS"
    (requirement,) = [Requirement(r) for r in project()["dependencies"] if normalized(Requirement(r).name) == distribution]
    lowest = min((Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")), default=None)
    assert lowest is not None and lowest >= Version(floor), f"{requirement} allows versions without {text}"
