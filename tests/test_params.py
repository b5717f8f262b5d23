"""Method parameters are checked by type as well as range, in one place
(Method.make_params), for every method of the live registry and for the
Python API and the CLI alike."""

from __future__ import annotations

import pytest

import cnnviz_core
from cnnviz_core import cli
from cnnviz_core.errors import InputError, TargetError
from cnnviz_core.method import param_fields, param_types
from cnnviz_core.param_values import declared_types
from cnnviz_core.registry import get_registry

from conftest import output_files

METHODS = get_registry().methods

# Values of the wrong type for a parameter of each declared type.
WRONG = {
    int: ["abc", 1.5, True, [3]],
    float: ["abc", True, float("nan"), float("inf"), -float("inf"), 10 ** 400],
    bool: [1, "yes", None],
    str: [3, 1.5, True],
}


def plainly_accepts(kind: type, value) -> bool:
    """What a parameter of ``kind`` takes, written out independently of the
    code under test."""
    if isinstance(value, bool):
        return kind is bool
    if kind is str:
        return isinstance(value, str)
    if kind is int:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind is float:
        return isinstance(value, (int, float)) and abs(value) < 1e308  # finite, and not too large for a float
    return False


def wrong_values(annotation) -> list:
    """Values of the wrong type (or non-finite) for every member of the
    annotation, and None where it is not allowed."""
    kinds, optional = declared_types(annotation)
    values = [value for kind in kinds for value in WRONG[kind]
              if not (value is None and optional) and not any(plainly_accepts(other, value) for other in kinds)]
    if not optional and None not in values:
        values.append(None)
    return values


def typed_cases():
    """(method, parameter, bad value) for every method and every parameter
    of a checked type."""
    for name, cls in METHODS.items():
        hints = param_types(cls.Params)
        for field in param_fields(cls.Params):
            if declared_types(hints[field.name]) is None:
                continue
            for value in wrong_values(hints[field.name]):
                yield pytest.param(name, field.name, value, id=f"{name}-{field.name}-{value!r}"[:80])


def test_every_method_has_typed_parameters():
    """The generated cases below cover every method: none has a parameter
    whose annotation the check cannot read."""
    assert len(METHODS) >= 10
    for name, cls in METHODS.items():
        hints = param_types(cls.Params)
        unchecked = [f.name for f in param_fields(cls.Params) if declared_types(hints[f.name]) is None]
        assert unchecked == [], f"{name}: {unchecked}"


@pytest.mark.parametrize("method, name, value", list(typed_cases()))
def test_wrong_type_or_non_finite_value_is_refused(method, name, value):
    with pytest.raises(InputError) as info:
        METHODS[method].make_params(**{name: value})
    message = str(info.value)
    assert type(info.value) is InputError  # the type check, before any method-specific check
    assert message.startswith(f"{method}: parameter {name} (--{name.replace('_', '-')}) must be ")
    assert repr(value)[:40] in message and type(value).__name__ in message


def test_integral_floats_become_ints_and_ints_become_floats():
    integrated = METHODS["integrated_gradients"].make_params(steps=16.0, tolerance=1)
    assert integrated.steps == 16 and type(integrated.steps) is int
    assert integrated.tolerance == 1.0 and type(integrated.tolerance) is float
    import numpy as np

    numpy_values = METHODS["integrated_gradients"].make_params(steps=np.int64(8), tolerance=np.float32(0.5))
    assert type(numpy_values.steps) is int and type(numpy_values.tolerance) is float


def test_rise_and_occlusion_refuse_nan_baseline_alike():
    """Before: rise ran with baseline=nan and wrote all-NaN maps."""
    for method in ("rise", "occlusion", "score_cam"):
        with pytest.raises(InputError, match=f"^{method}: parameter baseline .* must be a finite number"):
            METHODS[method].make_params(baseline=float("nan"))


def test_allow_nonfinite_lets_a_parameter_take_inf():
    import dataclasses

    from cnnviz_core import AttributionMethod, AttributionParams, param

    @dataclasses.dataclass
    class Params(AttributionParams):
        limit: float = param(float("inf"), "stop after this many seconds (inf: never)", allow_nonfinite=True)
        scale: float = param(1.0, "a plain float")

    class Unlimited(AttributionMethod):
        name = "unlimited"

    Unlimited.Params = Params
    assert Unlimited.make_params(limit=float("inf")).limit == float("inf")
    with pytest.raises(InputError, match="scale"):
        Unlimited.make_params(scale=float("inf"))


def test_fractional_target_is_a_target_error(lite0, photos):
    for target in (1.5, True, [0.5]):
        with pytest.raises(TargetError, match="target must be an int"):
            cnnviz_core.run("saliency", lite0, [photos["chelsea"]], target=target)


# -- through the CLI: same check, exit 2, one line, nothing loaded or written -----------
@pytest.mark.parametrize(
    "method, flags, message",
    [
        ("rise", ["--baseline", "nan"], "rise: parameter baseline (--baseline) must be a finite number, got nan"),
        ("smoothgrad", ["--noise", "inf"], "smoothgrad: parameter noise (--noise) must be a finite number, got inf"),
        ("integrated_gradients", ["--steps", "abc"], "parameter steps (--steps) must be an integer, got 'abc'"),
        ("integrated_gradients", ["--steps", "2.5"], "parameter steps (--steps) must be an integer, got 2.5"),
        ("occlusion", ["--window", "1.5"], "parameter window (--window) must be an integer or text, got 1.5"),
    ],
)
def test_cli_refuses_bad_values_before_loading_the_model(capsys, monkeypatch, tmp_path, photos, method, flags, message):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the parameters were checked")

    monkeypatch.setattr(cli, "_load", never)
    out = tmp_path / "out"
    code = cli.main(["run", method, "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--out", str(out), *flags])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr and "Traceback" not in stderr
    assert output_files(out) == [] and not out.exists()


def test_cli_accepts_integral_float_text_for_an_int(capsys, tmp_path, photos):
    out = tmp_path / "out"
    code = cli.main(["run", "integrated_gradients", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                     "--integration", "riemann_trapezoid", "--steps", "4.0", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    import json

    assert json.loads((out / "integrated_gradients.json").read_text())["params"]["steps"] == 4
