"""Installed-looking plugin distributions for registry tests: a folder with
the plugins' modules and one ``NAME-VERSION.dist-info`` per distribution
(METADATA and entry_points.txt), which importlib.metadata finds through
sys.path (or PYTHONPATH in a subprocess) exactly as it finds a pip install.
No build, no network."""

from __future__ import annotations

import textwrap
from pathlib import Path

# A method that does nothing useful; its module decides the name and behaviour.
METHOD_MODULE = textwrap.dedent(
    '''
    import numpy as np
    from cnnviz_core import AttributionMethod, hookimpl
    from cnnviz_core.method import Attribution


    class {cls}(AttributionMethod):
        """{doc}"""

        name = "{name}"

        def attribute(self, inputs, targets):
            b, _, h, w = inputs.shape
            return Attribution(np.zeros((b, h, w), np.float32), np.zeros(b, np.int64), np.zeros(b, np.float32))


    @hookimpl
    def cnnviz_methods():
        return [{cls}]
    '''
)

# One module per way a plugin can be broken after it imports.
BROKEN_MODULES = {
    "wrong_signature": "from cnnviz_core import hookimpl\n\n@hookimpl\ndef cnnviz_methods(config):\n    return []\n",
    "misspelled_hook": "from cnnviz_core import hookimpl\n\n@hookimpl\ndef cnnviz_method():\n    return []\n",
    "raising_hook": "from cnnviz_core import hookimpl\n\n@hookimpl\ndef cnnviz_methods():\n    raise RuntimeError('hook exploded')\n",
    "invalid_class": "from cnnviz_core import hookimpl\n\nclass NotAMethod:\n    name = 'impostor'\n\n"
                     "@hookimpl\ndef cnnviz_methods():\n    return [NotAMethod]\n",
    "import_error": "raise ImportError('needs the missing_dependency package')\n",
}


def method_module(name: str, doc: str = "A test method.") -> str:
    return METHOD_MODULE.format(cls="M_" + name, name=name, doc=doc)


def write_distribution(site: Path, distribution: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """Write ``modules`` (module name → source) into ``site`` and a dist-info
    declaring ``entry_points`` (entry-point name → module) in the cnnviz group."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cnnviz]\n{lines}")


def write_plugin_site(site: Path, clash_name: str = "twin_method") -> dict[str, str]:
    """Two distributions that both contribute ``clash_name`` (plus a method of
    their own each), and one distribution per way of being broken. Returns
    entry-point name → distribution name."""
    owners = {}
    for letter in ("a", "b"):
        distribution, module = f"cnnviz-clash-{letter}", f"cnnviz_test_clash_{letter}"
        write_distribution(site, distribution, {
            module: method_module(clash_name, f"Twin from {distribution}."),
            f"{module}_own": method_module(f"own_method_{letter}"),
        }, {module: module, f"{module}_own": f"{module}_own"})
        owners[module] = owners[f"{module}_own"] = distribution
    for kind, source in BROKEN_MODULES.items():
        distribution, module = f"cnnviz-broken-{kind.replace('_', '-')}", f"cnnviz_test_{kind}"
        write_distribution(site, distribution, {module: source}, {module: module})
        owners[module] = distribution
    return owners
