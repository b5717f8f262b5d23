"""The plugin registry: a pluggy manager over the ``cnnviz`` entry-point group.

Each entry point is loaded on its own, so one plugin that fails to import is
recorded (entry-point name, distribution, error) and the others still load.
``CNNVIZ_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points; plugins can then be
registered by hand with :meth:`Registry.register`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import traceback
from typing import Any

import pluggy

from . import hookspecs
from .adapter import ModelAdapter, ModelEntry
from .errors import MethodNotFoundError, PluginError
from .method import Method, check_method_class

ENTRY_POINT_GROUP = "cnnviz"
DISABLE_AUTOLOAD_ENV = "CNNVIZ_DISABLE_PLUGIN_AUTOLOAD"


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    name: str  # entry-point name
    distribution: str
    value: str  # what the entry point points at
    error: str  # one line
    details: str  # the traceback, for --verbose


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    methods: tuple[str, ...]
    adapters: tuple[str, ...]
    models: tuple[str, ...]


class Registry:
    def __init__(self, autoload: bool | None = None):
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._distribution: dict[str, str] = {}
        self._entry_values: dict[str, str] = {}  # entry-point name → "module:attr" it loaded
        self._methods: dict[str, type[Method]] | None = None
        self._adapters: list[type[ModelAdapter]] | None = None
        self._models: dict[str, ModelEntry] | None = None
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        if autoload:
            self.load_entry_points()

    # -- loading -----------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for entry_point in importlib.metadata.entry_points(group=group):
            distribution = entry_point.dist.name if entry_point.dist is not None else "?"
            if self.manager.has_plugin(entry_point.name):
                owner = self._distribution.get(entry_point.name, "?")
                if self._entry_values.get(entry_point.name) != entry_point.value:
                    self.failures.append(PluginFailure(
                        entry_point.name, distribution, entry_point.value,
                        f"entry-point name {entry_point.name!r} is already taken by distribution {owner!r}; "
                        "rename the entry point (prefix it with your distribution's name)", "",
                    ))
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # noqa: BLE001 - any import failure is reported, not fatal
                self.failures.append(
                    PluginFailure(
                        entry_point.name, distribution, entry_point.value,
                        f"{type(error).__name__}: {error}", traceback.format_exc(),
                    )
                )
                continue
            self.register(plugin, entry_point.name, distribution)
            self._entry_values[entry_point.name] = entry_point.value

    def register(self, plugin: Any, name: str | None = None, distribution: str = "") -> str:
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self.manager.register(plugin, name=name)
        self._distribution[name] = distribution
        self._methods = self._adapters = self._models = None  # recollect lazily
        return name

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._methods = self._adapters = self._models = None

    # -- contributions -----------------------------------------------------
    def _contributions(self, hook_name: str):
        """(plugin name, item) for everything each plugin returned."""
        hook = getattr(self.manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = self.manager.get_name(impl.plugin)
            try:
                items = impl.function()
            except Exception as error:
                raise PluginError(f"plugin {plugin_name!r}: {hook_name}() raised {type(error).__name__}: {error}") from error
            for item in items or ():
                yield plugin_name, item

    @property
    def methods(self) -> dict[str, type[Method]]:
        if self._methods is None:
            methods: dict[str, type[Method]] = {}
            for plugin_name, cls in self._contributions("cnnviz_methods"):
                try:
                    check_method_class(cls)
                except ValueError as error:
                    raise PluginError(f"plugin {plugin_name!r} contributes an invalid method: {error}") from None
                if cls.name in methods:
                    raise PluginError(
                        f"method name {cls.name!r} is registered twice: by plugin {methods[cls.name].plugin!r} "
                        f"({methods[cls.name].__module__}.{methods[cls.name].__qualname__}) and by plugin {plugin_name!r} "
                        f"({cls.__module__}.{cls.__qualname__}); uninstall or disable one of them"
                    )
                cls.plugin = plugin_name
                methods[cls.name] = cls
            self._methods = dict(sorted(methods.items()))
        return self._methods

    @property
    def adapters(self) -> list[type[ModelAdapter]]:
        if self._adapters is None:
            adapters = []
            for plugin_name, cls in self._contributions("cnnviz_adapters"):
                if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
                    raise PluginError(f"plugin {plugin_name!r} contributes {cls!r}, not a ModelAdapter subclass")
                adapters.append(cls)
            self._adapters = adapters
        return self._adapters

    @property
    def models(self) -> dict[str, ModelEntry]:
        if self._models is None:
            models: dict[str, ModelEntry] = {}
            for plugin_name, entry in self._contributions("cnnviz_models"):
                if entry.name in models:
                    raise PluginError(
                        f"model name {entry.name!r} is registered twice: by plugin {models[entry.name].plugin!r} and by {plugin_name!r}"
                    )
                models[entry.name] = dataclasses.replace(entry, plugin=plugin_name)
            self._models = dict(sorted(models.items()))
        return self._models

    def method(self, name: str) -> type[Method]:
        try:
            return self.methods[name]
        except KeyError:
            raise MethodNotFoundError(
                f"no method named {name!r}; available: {', '.join(self.methods) or 'none'} (see `cnnviz methods`)"
            ) from None

    def plugins(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.manager.list_name_plugin():
            def contributed(hook_name):
                hook = getattr(self.manager.hook, hook_name)
                impls = [i for i in hook.get_hookimpls() if i.plugin is plugin]
                return tuple(getattr(x, "name", getattr(x, "__name__", str(x))) for i in impls for x in (i.function() or ()))

            infos.append(PluginInfo(name, self._distribution.get(name, ""), contributed("cnnviz_methods"),
                                    contributed("cnnviz_adapters"), contributed("cnnviz_models")))
        return infos


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry(registry: Registry | None = None) -> None:
    """Replace (or drop, to rebuild lazily) the process-wide registry; for tests
    and for programs that install plugins at run time."""
    global _default
    _default = registry
