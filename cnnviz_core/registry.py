"""The plugin registry: a pluggy manager over the ``cnnviz`` entry-point group.

Each plugin is isolated: one that fails to import, implements a hook with the
wrong signature or a misspelled name, raises in a hook, or contributes
something invalid is recorded as a :class:`PluginFailure` (plugin name,
distribution, what went wrong) and leaves out only what it broke; every other
plugin still loads. No pluggy exception reaches the caller.

A name contributed by two plugins (a method or a model) is an error only where
the name is used: ``registry.method(name)`` raises PluginError naming both
plugins, while every other method keeps working.

Environment:
- ``CNNVIZ_DISABLE_PLUGIN_AUTOLOAD=1`` reads no entry points (plugins can then
  be registered by hand with :meth:`Registry.register`);
- ``CNNVIZ_DISABLE_PLUGINS=name,other`` skips those entry points only.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import importlib.metadata
import os
import re
import traceback
import types
from typing import Any

import pluggy

from . import hookspecs
from .adapter import ModelAdapter, ModelEntry
from .errors import MethodNotFoundError, PluginError
from .method import Method, check_method_class

ENTRY_POINT_GROUP = "cnnviz"
DISABLE_AUTOLOAD_ENV = "CNNVIZ_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_PLUGINS_ENV = "CNNVIZ_DISABLE_PLUGINS"
HOOKS = ("cnnviz_methods", "cnnviz_adapters", "cnnviz_models")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    name: str  # plugin (entry-point) name
    distribution: str  # "" for a plugin registered in code
    value: str  # what the entry point points at, or the plugin's module
    error: str  # one line
    details: str  # the traceback, for --verbose


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    methods: tuple[str, ...]
    adapters: tuple[str, ...]
    models: tuple[str, ...]
    module: str = ""


@dataclasses.dataclass(frozen=True)
class NameClash:
    """One method or model name contributed by several plugins."""

    kind: str  # "method" or "model"
    name: str
    plugins: tuple[str, ...]
    origins: tuple[str, ...]  # per plugin: its distribution and the contributed object

    def message(self) -> str:
        both = " and ".join(f"plugin {p!r} ({o})" for p, o in zip(self.plugins, self.origins))
        return (f"{self.kind} name {self.name!r} is registered by {len(self.plugins)} plugins: {both}; "
                f"uninstall one of them, or skip one with {DISABLE_PLUGINS_ENV}={self.plugins[-1]}")


def _disabled_names() -> set[str]:
    return {n for n in re.split(r"[,\s]+", os.environ.get(DISABLE_PLUGINS_ENV, "")) if n}


def _qualified(obj: Any) -> str:
    if isinstance(obj, ModelEntry):
        obj = obj.factory
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


class Registry:
    def __init__(self, autoload: bool | None = None):
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.disabled: list[str] = []  # entry points skipped through CNNVIZ_DISABLE_PLUGINS
        self._load_failures: list[PluginFailure] = []
        self._distribution: dict[str, str] = {}
        self._entry_values: dict[str, str] = {}  # entry-point name → "module:attr" it loaded
        self._collected = False
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        if autoload:
            self.load_entry_points()

    # -- loading -----------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        disabled = _disabled_names()
        for entry_point in importlib.metadata.entry_points(group=group):
            distribution = entry_point.dist.name if entry_point.dist is not None else "?"
            if entry_point.name in disabled:
                if entry_point.name not in self.disabled:
                    self.disabled.append(entry_point.name)
                continue
            if self.manager.has_plugin(entry_point.name):
                owner = self._distribution.get(entry_point.name, "?")
                if self._entry_values.get(entry_point.name) != entry_point.value:
                    self._load_failures.append(PluginFailure(
                        entry_point.name, distribution, entry_point.value,
                        f"entry-point name {entry_point.name!r} is already taken by distribution {owner!r}; "
                        "rename the entry point (prefix it with your distribution's name)", "",
                    ))
                continue
            try:
                plugin = entry_point.load()
            except (Exception, SystemExit) as error:  # noqa: BLE001 - any import failure is reported, not fatal
                self._load_failures.append(PluginFailure(
                    entry_point.name, distribution, entry_point.value,
                    _one_line(f"{type(error).__name__}: {error}"), traceback.format_exc(),
                ))
                continue
            try:
                self.register(plugin, entry_point.name, distribution, value=entry_point.value)
            except PluginError as error:
                self._load_failures.append(PluginFailure(entry_point.name, distribution, entry_point.value, str(error), ""))

    def register(self, plugin: Any, name: str | None = None, distribution: str = "", value: str = "") -> str:
        """Register a plugin object or module; a plugin pluggy refuses (a hook
        with the wrong signature, a name taken) or one that implements a hook
        cnnviz does not have raises PluginError naming it, and is left out."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            raise PluginError(_one_line(f"plugin {name!r}: {error}")) from None
        except ValueError as error:  # the name or the object is registered already
            raise PluginError(_one_line(f"plugin {name!r} cannot be registered: {error}")) from None
        except Exception as error:  # noqa: BLE001 - e.g. an attribute that raises when pluggy scans the plugin
            raise PluginError(_one_line(f"plugin {name!r} cannot be registered: {type(error).__name__}: {error}")) from None
        problems = self._hook_problems(plugin)
        if problems:
            self.manager.unregister(plugin)
            raise PluginError(f"plugin {name!r}: {'; '.join(problems)}")
        self._distribution[name] = distribution
        if value:
            self._entry_values[name] = value
        self._collected = False  # recollect lazily
        return name

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._collected = False

    def _hook_problems(self, plugin: Any) -> list[str]:
        """Hook implementations cnnviz would silently never call: a name that
        is no cnnviz hook, or a hook function without the decorator."""
        problems = []
        implemented = {caller.name for caller in self.manager.get_hookcallers(plugin) or ()}
        for hook_name in sorted(implemented - set(HOOKS)):
            close = difflib.get_close_matches(hook_name, HOOKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"implements {hook_name!r}, which is not a cnnviz hook{hint}; the hooks are {', '.join(HOOKS)}")
        for hook_name in HOOKS:
            try:
                candidate = getattr(plugin, hook_name, None)
            except Exception:  # noqa: BLE001 - an attribute that raises is no hook
                candidate = None
            if hook_name not in implemented and callable(candidate):
                problems.append(f"{hook_name}() lacks the @cnnviz_core.hookimpl decorator, so cnnviz would never call it")
        return problems

    # -- contributions -----------------------------------------------------
    def _module(self, name: str) -> str:
        plugin = self.manager.get_plugin(name)
        if isinstance(plugin, types.ModuleType):
            return plugin.__name__
        modules = {impl.function.__module__ for caller in self.manager.get_hookcallers(plugin) or ()
                   for impl in caller.get_hookimpls() if impl.plugin is plugin}
        return ", ".join(sorted(modules)) or type(plugin).__module__

    def _fail(self, plugin_name: str, error: str, details: str = "") -> None:
        where = self._entry_values.get(plugin_name) or self._module(plugin_name)
        self._hook_failures.append(PluginFailure(plugin_name, self._distribution.get(plugin_name, ""), where,
                                                 _one_line(error), details))

    def _origin(self, plugin_name: str, obj: Any) -> str:
        return f"{self._distribution.get(plugin_name) or 'registered in code'}: {_qualified(obj)}"

    def _contributions(self, hook_name: str):
        """(plugin name, list of items) for each plugin implementing the hook;
        a hook that raises or returns something else than a list is recorded as
        its plugin's failure and contributes nothing."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            plugin_name = self.manager.get_name(impl.plugin)
            try:
                items = impl.function()
            except Exception as error:  # noqa: BLE001 - a plugin's bug is its own failure
                self._fail(plugin_name, f"{hook_name}() raised {type(error).__name__}: {error}", traceback.format_exc())
                continue
            if items is None:
                items = []
            if not isinstance(items, (list, tuple, set, frozenset)):
                self._fail(plugin_name, f"{hook_name}() returned {type(items).__name__}, not a list")
                continue
            yield plugin_name, list(items)

    def _collect(self) -> None:
        """Call every hook once, check what each plugin contributes, and sort
        out name clashes."""
        if self._collected:
            return
        self._hook_failures: list[PluginFailure] = []
        self._contributed: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        self._clashes: dict[tuple[str, str], NameClash] = {}
        methods = self._collect_named("method", "cnnviz_methods", self._valid_method)
        self._methods: dict[str, type[Method]] = {}
        for name, owners in methods.items():
            if len(owners) == 1:
                plugin_name, cls = owners[0]
                cls.plugin = plugin_name
                self._methods[name] = cls
        models = self._collect_named("model", "cnnviz_models", self._valid_model)
        self._models: dict[str, ModelEntry] = {
            name: dataclasses.replace(owners[0][1], plugin=owners[0][0]) for name, owners in models.items() if len(owners) == 1
        }
        self._adapters: list[type[ModelAdapter]] = []
        for plugin_name, items in self._contributions("cnnviz_adapters"):
            for cls in items:
                if isinstance(cls, type) and issubclass(cls, ModelAdapter):
                    self._adapters.append(cls)
                    self._contributed[plugin_name]["adapters"].append(cls.__name__)
                else:
                    self._fail(plugin_name, f"contributes {cls!r} as an adapter: not a cnnviz_core.ModelAdapter subclass")
        self._methods = dict(sorted(self._methods.items()))
        self._models = dict(sorted(self._models.items()))
        self._collected = True

    def _collect_named(self, kind: str, hook_name: str, validate) -> dict[str, list[tuple[str, Any]]]:
        """Valid contributions by name, each with the plugins that made it;
        names made by several plugins become clashes."""
        by_name: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
        for plugin_name, items in self._contributions(hook_name):
            for item in items:
                problem = validate(item)
                if problem:
                    self._fail(plugin_name, f"contributes an invalid {kind}: {problem}")
                    continue
                by_name[item.name].append((plugin_name, item))
                self._contributed[plugin_name][kind + "s"].append(item.name)
        for name, owners in by_name.items():
            if len(owners) > 1:
                self._clashes[(kind, name)] = NameClash(kind, name, tuple(p for p, _ in owners),
                                                        tuple(self._origin(p, obj) for p, obj in owners))
        return by_name

    @staticmethod
    def _valid_method(cls) -> str:
        try:
            check_method_class(cls)
        except ValueError as error:
            return str(error)
        except Exception as error:  # noqa: BLE001 - e.g. a property that raises
            return f"{type(error).__name__}: {error}"
        return ""

    @staticmethod
    def _valid_model(entry) -> str:
        if not isinstance(entry, ModelEntry):
            return f"{entry!r} is not a cnnviz_core.ModelEntry"
        if not entry.name or not isinstance(entry.name, str):
            return f"{entry!r} has no name"
        if not callable(entry.factory):
            return f"model {entry.name!r} has a factory that is not callable"
        return ""

    # -- what callers read -------------------------------------------------
    @property
    def methods(self) -> dict[str, type[Method]]:
        """Methods by name, sorted; a name two plugins contribute is left out
        (see :attr:`clashes`)."""
        self._collect()
        return self._methods

    @property
    def adapters(self) -> list[type[ModelAdapter]]:
        self._collect()
        return self._adapters

    @property
    def models(self) -> dict[str, ModelEntry]:
        self._collect()
        return self._models

    @property
    def clashes(self) -> list[NameClash]:
        self._collect()
        return [self._clashes[key] for key in sorted(self._clashes)]

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that failed to load, register or contribute, in that order."""
        self._collect()
        return self._load_failures + self._hook_failures

    def report_failure(self, plugin_name: str, error: str) -> None:
        """Record a problem with a plugin found by a caller (the CLI, when a
        method's parameters cannot become flags)."""
        where = self._entry_values.get(plugin_name) or (self._module(plugin_name) if self.manager.has_plugin(plugin_name) else "")
        self._load_failures.append(PluginFailure(plugin_name, self._distribution.get(plugin_name, ""), where, _one_line(error), ""))

    def check_name(self, kind: str, name: Any) -> None:
        """Raise PluginError if ``name`` (a method or model name) is contributed
        by several plugins."""
        self._collect()
        clash = self._clashes.get((kind, name)) if isinstance(name, str) else None
        if clash is not None:
            raise PluginError(clash.message())

    def method(self, name: str) -> type[Method]:
        self.check_name("method", name)
        try:
            return self.methods[name]
        except KeyError:
            raise MethodNotFoundError(
                f"no method named {name!r}; available: {', '.join(self.methods) or 'none'} (see `cnnviz methods`)"
            ) from None

    def plugins(self) -> list[PluginInfo]:
        self._collect()
        infos = []
        for name, _ in self.manager.list_name_plugin():
            contributed = self._contributed.get(name, {})
            infos.append(PluginInfo(name, self._distribution.get(name, ""), tuple(contributed.get("methods", ())),
                                    tuple(contributed.get("adapters", ())), tuple(contributed.get("models", ())),
                                    self._module(name)))
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
