"""The folder tree, pyproject.toml and the entry points tell the same story:
every package folder is listed for installation, every entry point names a
module that exists, and each family folder holds the plugins of that kind."""

from __future__ import annotations

import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"cnnviz_core": "cnnviz_core", "adapters": "cnnviz_adapters", "plugins": "cnnviz_plugins"}
FAMILIES = {"attribution": "attribution", "synthesis": "synthesis", "analysis": "analysis", "evaluation": "metric"}

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_folders() -> set[str]:
    found = set()
    for folder, name in IMPORT_NAMES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(ROOT / folder).parts)))
    return found


def module_path(dotted: str) -> pathlib.Path:
    top, *rest = dotted.split(".")
    folder = {name: folder for folder, name in IMPORT_NAMES.items()}[top]
    return (ROOT / folder).joinpath(*rest).with_suffix(".py")


def test_every_package_folder_is_listed_for_installation():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == package_folders(), (
        f"missing from pyproject: {sorted(package_folders() - listed)}; listed but absent: {sorted(listed - package_folders())}")


def test_no_generic_top_level_import_name():
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"cnnviz_core": "cnnviz_core", "cnnviz_adapters": "adapters",
                                                               "cnnviz_plugins": "plugins"}


@pytest.mark.parametrize("name,target", sorted(PYPROJECT["project"]["entry-points"]["cnnviz"].items()))
def test_entry_point_names_an_existing_module_in_the_right_family(name, target):
    path = module_path(target)
    assert path.is_file(), f"entry point {name} names {target}, but {path} does not exist"
    if target.startswith("cnnviz_plugins."):
        assert target.split(".")[1] in FAMILIES, f"{target} is not inside a family folder ({', '.join(FAMILIES)})"


def test_each_built_in_method_sits_in_the_folder_of_its_kind():
    from cnnviz_core import get_registry

    built_in = {name: cls for name, cls in get_registry().methods.items() if cls.__module__.startswith("cnnviz_plugins.")}
    assert len(built_in) >= 24
    for name, cls in built_in.items():
        family = cls.__module__.split(".")[1]
        assert FAMILIES.get(family) == cls.kind, f"{name} is a {cls.kind} method but lives in plugins/{family}/"


def test_every_plugin_module_with_a_hookimpl_has_an_entry_point():
    targets = set(PYPROJECT["project"]["entry-points"]["cnnviz"].values())
    for path in (ROOT / "plugins").rglob("*.py"):
        if "@hookimpl" in path.read_text():
            dotted = ".".join(("cnnviz_plugins", *path.relative_to(ROOT / "plugins").with_suffix("").parts))
            assert dotted in targets, f"{path.relative_to(ROOT)} implements a hook but no entry point names it"
