"""The hooks a cnnviz plugin implements. Each returns the classes or entries it
contributes; the registry calls them with keyword arguments only.

A plugin is any importable module (or object) with functions decorated by
``cnnviz_core.hookimpl`` and named like these specs, exposed through an entry
point in the ``cnnviz`` group.

The registry checks each plugin on its own: a hook with arguments, a function
named like no hook here, a hook function without the decorator, a hook that
raises or returns something else than a list, and an invalid contribution are
reported by ``cnnviz plugins`` under the plugin's name and distribution, and
the other plugins load as usual.
"""

from __future__ import annotations

import pluggy

PROJECT = "cnnviz"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cnnviz_methods() -> list[type]:
    """Return the Method subclasses this plugin contributes.

    Each class carries its registry ``name``, its ``kind`` (attribution,
    synthesis, analysis), the capabilities it ``requires`` and its ``Params``
    dataclass. A name two plugins contribute is an error naming both where
    the name is used (``cnnviz run NAME``); other methods keep working.
    """


@hookspec
def cnnviz_adapters() -> list[type]:
    """Return the ModelAdapter subclasses this plugin contributes.

    ``cnnviz_core.load_model`` asks each adapter class, through its
    ``can_load(spec)`` classmethod, whether it understands a model spec.
    """


@hookspec
def cnnviz_models() -> list:
    """Return ``cnnviz_core.ModelEntry`` records: named models users load by
    name (``load_model("efficientnet_lite0")``), each with a factory that builds
    an adapter without touching the network. As for methods, a name two
    plugins contribute is an error only when that model is loaded."""
