"""The plugin registry: collecting contributions, rejecting bad ones, loading
entry points one by one, and method parameter checks."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import textwrap
import types

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import AttributionMethod, hookimpl, param
from cnnviz_core.errors import InputError, MethodNotFoundError, PluginError
from cnnviz_core.method import Attribution, AttributionParams
from cnnviz_core.registry import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, Registry


def make_method(method_name: str, **attributes) -> type[AttributionMethod]:
    def attribute(self, inputs, targets):
        b, _, h, w = inputs.shape
        return Attribution(maps=np.zeros((b, h, w), np.float32), classes=np.zeros(b, np.int64), scores=np.zeros(b, np.float32))

    namespace = {"name": method_name, "attribute": attribute, "__doc__": f"The {method_name} test method."}
    namespace.update(attributes)
    return type(f"Method_{method_name}", (AttributionMethod,), namespace)


def plugin_of(*classes) -> types.SimpleNamespace:
    @hookimpl
    def cnnviz_methods():
        return list(classes)

    return types.SimpleNamespace(cnnviz_methods=cnnviz_methods)


@pytest.fixture
def registry() -> Registry:
    return Registry(autoload=False)


# -- collecting -----------------------------------------------------------------------
def test_methods_collected_and_sorted(registry):
    zeta, alpha, mid = make_method("zeta"), make_method("alpha"), make_method("mid")
    registry.register(plugin_of(zeta, alpha), name="first")
    registry.register(plugin_of(mid), name="second")
    methods = registry.methods
    assert list(methods) == ["alpha", "mid", "zeta"]
    assert methods["alpha"] is alpha
    assert alpha.plugin == "first"
    assert mid.plugin == "second"
    assert registry.method("mid") is mid


def test_class_based_plugin(registry):
    method = make_method("classy")

    class Plugin:
        @hookimpl
        def cnnviz_methods(self):
            return [method]

    registry.register(Plugin(), name="classy-plugin")
    assert list(registry.methods) == ["classy"]
    assert method.plugin == "classy-plugin"


def test_registering_later_recollects(registry):
    registry.register(plugin_of(make_method("one")), name="p1")
    assert list(registry.methods) == ["one"]
    registry.register(plugin_of(make_method("two")), name="p2")
    assert list(registry.methods) == ["one", "two"]
    registry.unregister("p1")
    assert list(registry.methods) == ["two"]


def test_unknown_method_lists_available(registry):
    registry.register(plugin_of(make_method("known")), name="p")
    with pytest.raises(MethodNotFoundError) as info:
        registry.method("unknown")
    assert "unknown" in str(info.value)
    assert "known" in str(info.value)


def test_empty_registry_has_nothing():
    registry = Registry(autoload=False)
    assert registry.methods == {}
    assert registry.models == {}
    assert registry.adapters == []
    assert registry.failures == []


def failure_of(registry, plugin_name):
    failures = [f for f in registry.failures if f.name == plugin_name]
    assert len(failures) == 1, registry.failures
    return failures[0]


def test_duplicate_method_name_is_an_error_only_where_used(registry):
    registry.register(plugin_of(make_method("twin")), name="plugin-one")
    registry.register(plugin_of(make_method("twin"), make_method("single")), name="plugin-two")
    registry.register(plugin_of(make_method("other")), name="plugin-three")
    # every other method still works; the clashing name is left out of the list
    assert list(registry.methods) == ["other", "single"]
    assert registry.method("single").plugin == "plugin-two"
    with pytest.raises(PluginError) as info:
        registry.method("twin")
    message = str(info.value)
    assert "'twin'" in message and "'plugin-one'" in message and "'plugin-two'" in message
    assert "test_registry.Method_twin" in message  # which class each plugin contributes
    (clash,) = registry.clashes
    assert (clash.kind, clash.name, clash.plugins) == ("method", "twin", ("plugin-one", "plugin-two"))
    cnnviz_core.reset_registry(registry)
    try:  # the Python API refuses it the same way, before touching the model
        with pytest.raises(PluginError, match="'plugin-one'.*'plugin-two'"):
            cnnviz_core.run("twin", model=object())
    finally:
        cnnviz_core.reset_registry(None)
    assert registry.failures == []  # a clash is not a plugin failure: both plugins are fine alone
    # removing one plugin resolves it
    registry.unregister("plugin-one")
    assert registry.method("twin").plugin == "plugin-two"


def test_duplicate_model_name_is_an_error_only_where_used(registry):
    def factory(**options):
        raise AssertionError("never built in this test")

    def models_plugin(*names):
        @hookimpl
        def cnnviz_models():
            return [cnnviz_core.ModelEntry(n, factory) for n in names]

        return types.SimpleNamespace(cnnviz_models=cnnviz_models)

    registry.register(models_plugin("net", "solo"), name="zoo-a")
    registry.register(models_plugin("net"), name="zoo-b")
    assert list(registry.models) == ["solo"]
    assert registry.models["solo"].plugin == "zoo-a"
    with pytest.raises(PluginError, match="model name 'net'.*'zoo-a'.*'zoo-b'"):
        registry.check_name("model", "net")
    registry.check_name("model", "solo")  # no clash: no error
    cnnviz_core.reset_registry(registry)
    try:
        with pytest.raises(PluginError, match="'zoo-a'.*'zoo-b'"):
            cnnviz_core.load_model("net")
    finally:
        cnnviz_core.reset_registry(None)


class NotAMethod:
    name = "impostor"


class PlainParams:  # not a dataclass
    batch_size = None


@pytest.mark.parametrize(
    "contribution, reason",
    [
        (NotAMethod, "not a cnnviz_core.Method subclass"),
        ("gradcam", "not a cnnviz_core.Method subclass"),
        (lambda: make_method("noparams", Params=PlainParams), "must be a dataclass"),
        (lambda: make_method(""), "no registry name"),
        (lambda: make_method("badkind", kind="magic"), "kind must be one of"),
    ],
)
def test_invalid_contribution_is_a_failure_of_its_plugin_only(registry, contribution, reason):
    if callable(contribution) and not isinstance(contribution, type):
        contribution = contribution()
    registry.register(plugin_of(contribution, make_method("sibling")), name="broken-plugin")
    registry.register(plugin_of(make_method("fine")), name="good-plugin")
    # the plugin's valid method and the other plugin's still load
    assert list(registry.methods) == ["fine", "sibling"]
    failure = failure_of(registry, "broken-plugin")
    assert reason in failure.error and "invalid method" in failure.error
    assert failure.value == __name__  # the module the plugin's hooks live in
    assert {info.name: info.methods for info in registry.plugins()} == {"broken-plugin": ("sibling",), "good-plugin": ("fine",)}


def test_params_field_without_default_is_refused(registry):
    @dataclasses.dataclass
    class Params(AttributionParams):
        steps: int = 3

    # A dataclass field without a default may only follow defaulted fields in a
    # subclass via kw_only; build one directly.
    NoDefault = dataclasses.make_dataclass("NoDefault", [("steps", int, dataclasses.field(kw_only=True))], bases=(Params,))
    registry.register(plugin_of(make_method("nodefault", Params=NoDefault)), name="strict-plugin")
    assert registry.methods == {}
    assert "needs a default" in failure_of(registry, "strict-plugin").error


@pytest.mark.parametrize("default, expected", [("three", "must be an integer"), (2.5, "must be an integer"),
                                               (float("nan"), "must be a finite number")])
def test_params_default_of_the_wrong_type_is_refused(registry, default, expected):
    kind = float if isinstance(default, float) and default != default else int
    BadDefault = dataclasses.make_dataclass("BadDefault", [("steps", kind, param(default, "steps"))], bases=(AttributionParams,))
    registry.register(plugin_of(make_method("baddefault", Params=BadDefault)), name="sloppy-plugin")
    assert registry.methods == {}
    error = failure_of(registry, "sloppy-plugin").error
    assert "bad default" in error and expected in error


def test_hook_that_raises_is_a_failure_of_its_plugin(registry):
    @hookimpl
    def cnnviz_methods():
        raise RuntimeError("boom")

    registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="exploding")
    registry.register(plugin_of(make_method("survivor")), name="calm")
    assert list(registry.methods) == ["survivor"]
    failure = failure_of(registry, "exploding")
    assert failure.error == "cnnviz_methods() raised RuntimeError: boom"
    assert "Traceback" in failure.details and "boom" in failure.details
    assert {info.name for info in registry.plugins()} == {"exploding", "calm"}
    # collected once: asking again neither calls the hook again nor duplicates the failure
    assert len(registry.failures) == 1 and len(registry.failures) == 1


def test_hook_returning_something_else_than_a_list(registry):
    @hookimpl
    def cnnviz_methods():
        return make_method("lonely")  # a class, not a list of classes

    registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="unlisted")
    assert registry.methods == {}
    assert "returned type, not a list" in failure_of(registry, "unlisted").error


def test_wrong_signature_is_refused_at_registration(registry):
    @hookimpl
    def cnnviz_methods(config):
        return []

    with pytest.raises(PluginError, match="'wrong-args'.*config"):
        registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="wrong-args")
    assert registry.manager.list_name_plugin() == []  # left out, not half registered
    assert registry.methods == {}


def test_misspelled_hook_is_refused_at_registration(registry):
    method = make_method("typo_method")

    @hookimpl
    def cnnviz_method():  # the hook is cnnviz_methods
        return [method]

    with pytest.raises(PluginError) as info:
        registry.register(types.SimpleNamespace(cnnviz_method=cnnviz_method), name="typo")
    assert "'cnnviz_method', which is not a cnnviz hook (did you mean 'cnnviz_methods'?)" in str(info.value)
    assert registry.manager.list_name_plugin() == []


def test_hook_without_decorator_is_refused_at_registration(registry):
    def cnnviz_methods():
        return [make_method("undecorated")]

    with pytest.raises(PluginError, match="lacks the @cnnviz_core.hookimpl decorator"):
        registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="bare")


def test_invalid_adapter_and_model_contributions(registry):
    @hookimpl
    def cnnviz_adapters():
        return [NotAMethod]

    @hookimpl
    def cnnviz_models():
        return ["efficientnet_lite0"]

    registry.register(types.SimpleNamespace(cnnviz_adapters=cnnviz_adapters, cnnviz_models=cnnviz_models), name="junk")
    assert registry.adapters == [] and registry.models == {}
    errors = sorted(f.error for f in registry.failures)
    assert len(errors) == 2
    assert "not a cnnviz_core.ModelAdapter subclass" in errors[0]
    assert "invalid model: 'efficientnet_lite0' is not a cnnviz_core.ModelEntry" in errors[1]


# -- entry points -------------------------------------------------------------------------
GOOD_PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from cnnviz_core import AttributionMethod, hookimpl
    from cnnviz_core.method import Attribution


    class EntryPointMethod(AttributionMethod):
        \"\"\"Loaded through an entry point.\"\"\"

        name = "ep_method"

        def attribute(self, inputs, targets):
            b, _, h, w = inputs.shape
            return Attribution(np.zeros((b, h, w), np.float32), np.zeros(b, np.int64), np.zeros(b, np.float32))


    @hookimpl
    def cnnviz_methods():
        return [EntryPointMethod]
    """
)

BROKEN_PLUGIN = textwrap.dedent(
    """
    raise ImportError("needs the missing_dependency package")
    """
)


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    (tmp_path / "cnnviz_test_good_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "cnnviz_test_broken_plugin.py").write_text(BROKEN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        importlib.metadata.EntryPoint("broken", "cnnviz_test_broken_plugin", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("good", "cnnviz_test_good_plugin", ENTRY_POINT_GROUP),
    ]
    requested = []

    def entry_points(**kwargs):
        requested.append(kwargs)
        return [p for p in points if p.group == kwargs.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    yield requested
    import sys

    for module in ("cnnviz_test_good_plugin", "cnnviz_test_broken_plugin"):
        sys.modules.pop(module, None)


def test_failing_entry_point_is_recorded_and_others_load(fake_entry_points, monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    registry = Registry()
    assert fake_entry_points == [{"group": ENTRY_POINT_GROUP}]
    assert len(registry.failures) == 1
    failure = registry.failures[0]
    assert failure.name == "broken"
    assert failure.value == "cnnviz_test_broken_plugin"
    assert failure.error == "ImportError: needs the missing_dependency package"
    assert "Traceback" in failure.details
    assert list(registry.methods) == ["ep_method"]
    assert registry.methods["ep_method"].plugin == "good"
    infos = {info.name: info for info in registry.plugins()}
    assert set(infos) == {"good"}
    assert infos["good"].methods == ("ep_method",)


def test_autoload_disabled_by_environment(fake_entry_points, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = Registry()
    assert fake_entry_points == []
    assert registry.methods == {}
    assert registry.failures == []
    assert registry.manager.list_name_plugin() == []


def test_autoload_disabled_loads_nothing_from_real_install(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = Registry()
    assert registry.methods == {}
    assert registry.models == {}
    # Explicit autoload overrides the environment.
    assert "gradcam" in Registry(autoload=True).methods


def test_entry_point_loaded_twice_is_not_registered_twice(fake_entry_points):
    registry = Registry(autoload=False)
    registry.load_entry_points()
    registry.load_entry_points()
    assert list(registry.methods) == ["ep_method"]
    assert [name for name, _ in registry.manager.list_name_plugin()] == ["good"]


def test_real_installed_registry(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    registry = Registry()
    assert registry.failures == [], [f.error for f in registry.failures]
    assert {"gradcam", "occlusion"} <= set(registry.methods)
    assert "efficientnet_lite0" in registry.models
    assert registry.methods["gradcam"].plugin == "gradcam"
    assert len(registry.adapters) >= 2
    assert all(issubclass(a, cnnviz_core.ModelAdapter) for a in registry.adapters)


# -- Method.make_params ----------------------------------------------------------------
@dataclasses.dataclass
class StrideParams(AttributionParams):
    stride: int = param(4, "pixels between windows", minimum=1)
    mode: str = param("fast", "how", choices=("fast", "exact"))


StrideMethod = make_method("stride_method", Params=StrideParams)


def test_make_params_defaults_and_values():
    params = StrideMethod.make_params()
    assert (params.stride, params.mode, params.score, params.batch_size) == (4, "fast", "logit", None)
    params = StrideMethod.make_params(stride=2, mode="exact", score="prob", batch_size=3)
    assert (params.stride, params.mode, params.score, params.batch_size) == (2, "exact", "prob", 3)


def test_make_params_unknown_parameter_lists_known_ones():
    with pytest.raises(InputError) as info:
        StrideMethod.make_params(strides=2)
    message = str(info.value)
    assert "stride_method" in message
    assert "strides" in message
    for known in ("batch_size", "score", "stride", "mode"):
        assert known in message


def test_make_params_value_outside_choices():
    with pytest.raises(InputError) as info:
        StrideMethod.make_params(mode="slow")
    assert "--mode" in str(info.value)
    assert "fast, exact" in str(info.value)
    assert "'slow'" in str(info.value)
    with pytest.raises(InputError, match="--score"):
        StrideMethod.make_params(score="softmax")


@pytest.mark.parametrize("values", [{"stride": 0}, {"stride": -3}, {"batch_size": 0}])
def test_make_params_value_below_minimum(values):
    (name, value), = values.items()
    with pytest.raises(InputError) as info:
        StrideMethod.make_params(**values)
    assert f"--{name.replace('_', '-')}" in str(info.value)
    assert "at least 1" in str(info.value)


def test_check_params_hook_runs():
    def check_params(cls, params):
        if params.stride > 10:
            raise InputError("stride too large")

    Checked = make_method("checked", Params=StrideParams, check_params=classmethod(check_params))
    assert Checked.make_params(stride=10).stride == 10
    with pytest.raises(InputError, match="too large"):
        Checked.make_params(stride=11)


def test_entry_point_name_clash_is_reported(fake_entry_points, tmp_path, monkeypatch):
    """A second entry point under a name already taken is recorded as a
    failure instead of vanishing; the first one keeps working."""
    (tmp_path / "cnnviz_test_impostor_plugin.py").write_text(GOOD_PLUGIN.replace("ep_method", "impostor_method"))
    original = importlib.metadata.entry_points
    clash = importlib.metadata.EntryPoint("good", "cnnviz_test_impostor_plugin", ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [*original(**kw), clash])
    registry = Registry(autoload=False)
    registry.load_entry_points()
    assert list(registry.methods) == ["ep_method"]
    clashes = [f for f in registry.failures if f.value == "cnnviz_test_impostor_plugin"]
    assert len(clashes) == 1 and "already taken" in clashes[0].error


def test_reserved_parameter_names_are_refused():
    import dataclasses

    from cnnviz_core import AttributionMethod, AttributionParams, param
    from cnnviz_core.method import check_method_class

    @dataclasses.dataclass
    class ClashingParams(AttributionParams):
        out: str = param("x", "collides with cnnviz run --out")

    class Clashing(AttributionMethod):
        name = "clashing"
        Params = ClashingParams

    with pytest.raises(ValueError, match="reserved"):
        check_method_class(Clashing)


# -- real installed distributions (dist-info on sys.path, found by importlib.metadata) ----
@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    from plugin_dists import write_plugin_site

    site = tmp_path / "site"
    owners = write_plugin_site(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv("CNNVIZ_DISABLE_PLUGINS", raising=False)
    yield owners
    import sys

    for module in owners:
        sys.modules.pop(module, None)


def test_installed_plugins_are_isolated_from_each_other(plugin_site):
    registry = Registry()
    failures = {f.name: f for f in registry.failures}
    expected = {
        "cnnviz_test_wrong_signature": "are declared in the hookimpl but can not be found in the hookspec",
        "cnnviz_test_misspelled_hook": "did you mean 'cnnviz_methods'?",
        "cnnviz_test_raising_hook": "cnnviz_methods() raised RuntimeError: hook exploded",
        "cnnviz_test_invalid_class": "is not a cnnviz_core.Method subclass",
        "cnnviz_test_import_error": "ImportError: needs the missing_dependency package",
    }
    assert set(failures) == set(expected)
    for name, message in expected.items():
        assert message in failures[name].error, failures[name]
        assert failures[name].distribution == plugin_site[name]  # reported with its distribution
        assert failures[name].value == name  # and the module the entry point names
        assert "\n" not in failures[name].error
    # the built-ins and each clashing distribution's other method all load
    assert {"gradcam", "occlusion", "own_method_a", "own_method_b"} <= set(registry.methods)
    assert "twin_method" not in registry.methods
    with pytest.raises(PluginError) as info:
        registry.method("twin_method")
    assert "cnnviz_test_clash_a" in str(info.value) and "cnnviz_test_clash_b" in str(info.value)
    assert "cnnviz-clash-a" in str(info.value) and "cnnviz-clash-b" in str(info.value)
    infos = {i.name: i for i in registry.plugins()}
    assert infos["cnnviz_test_clash_a_own"].distribution == "cnnviz-clash-a"
    assert infos["cnnviz_test_raising_hook"].methods == ()


def test_disable_plugins_by_name(plugin_site, monkeypatch):
    monkeypatch.setenv("CNNVIZ_DISABLE_PLUGINS", "cnnviz_test_clash_b, cnnviz_test_raising_hook")
    registry = Registry()
    assert registry.method("twin_method").plugin == "cnnviz_test_clash_a"  # the clash is gone
    assert "own_method_b" in registry.methods  # only the named entry point is skipped
    assert {"cnnviz_test_clash_b", "cnnviz_test_raising_hook"} == set(registry.disabled)
    assert "cnnviz_test_raising_hook" not in {f.name for f in registry.failures}
