"""The one place a method parameter's value is checked against its declared
type: ``int``, ``float``, ``bool``, ``str``, ``X | None`` and unions of these.

Python callers and the CLI go through the same check (``Method.make_params``),
so ``steps="abc"``, ``--steps abc``, ``noise=nan`` and ``--noise nan`` get the
same typed error. Rules:

- an ``int`` takes integers and integral floats (``3.0`` becomes ``3``);
  never a bool, never ``3.5``;
- a ``float`` takes any real number but a bool, and must be finite unless the
  parameter was declared with ``param(..., allow_nonfinite=True)``;
- a ``bool`` takes only ``True``/``False``; a ``str`` only text;
- ``None`` only where the annotation allows it.

Annotations outside this set are not checked here (the method's own
``check_params`` is responsible for them).
"""

from __future__ import annotations

import math
import numbers
import types
import typing
from typing import Any

import numpy as np

from .errors import InputError

CHECKED = (bool, int, float, str)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def declared_types(annotation) -> tuple[tuple[type, ...], bool] | None:
    """(the checked member types, whether None is allowed), or None when the
    annotation is not one this module checks."""
    if annotation in CHECKED:
        return (annotation,), False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        kinds = tuple(m for m in members if m is not type(None))
        if kinds and all(k in CHECKED for k in kinds):
            return kinds, len(kinds) < len(members)
    return None


def describe(kinds: tuple[type, ...], optional: bool, finite: bool = True) -> str:
    names = [("a finite number" if finite else "a number") if k is float else _NAMES[k] for k in kinds]
    return " or ".join(names + (["None"] if optional else []))


def _as(kind: type, value: Any, finite: bool):
    """``value`` converted to ``kind``, or None when it is not one."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value) if kind is bool else None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
            return int(value)
        return None
    if kind is float:
        if not isinstance(value, numbers.Real):
            return None
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            return None
        return number if math.isfinite(number) or not finite else None
    if kind is str:
        return str(value) if isinstance(value, str) else None
    return None


def check_value(method: str, name: str, annotation, value: Any, allow_nonfinite: bool = False) -> Any:
    """``value`` converted to the parameter's declared type (``3.0`` → ``3``
    for an int), or InputError naming the method, the parameter, the expected
    type and the value given."""
    declared = declared_types(annotation)
    if declared is None:
        return value
    kinds, optional = declared
    if value is None:
        if optional:
            return None
    else:
        for kind in kinds:
            converted = _as(kind, value, finite=not allow_nonfinite)
            if converted is not None:
                return converted
    flag = "--" + name.replace("_", "-")
    raise InputError(
        f"{method}: parameter {name} ({flag}) must be {describe(kinds, optional, not allow_nonfinite)}, "
        f"got {value!r} ({type(value).__name__})"
    )
