"""Turn a method's Params dataclass into argparse flags, and back."""

from __future__ import annotations

import argparse

from .method import param_fields, param_types
from .param_values import declared_types


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def text_converter(annotation):
    """An argparse ``type=`` that reads the flag's text as the first numeric
    type the parameter declares (int before float) and otherwise keeps the
    text. It never rejects: the value then goes through the same type check
    as a Python caller's (``Method.make_params``), so ``--steps abc``,
    ``--steps 1.5`` and ``--noise nan`` get the same message as ``steps="abc"``."""
    declared = declared_types(annotation)
    kinds = declared[0] if declared else (str,)

    def convert(text: str):
        for kind in kinds:
            if kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    continue
        if int in kinds and float not in kinds:
            try:  # "3.0" for an int: make_params accepts integral floats
                return float(text)
            except ValueError:
                pass
        return text

    convert.__name__ = "/".join(k.__name__ for k in kinds)  # argparse names it in its own errors
    return convert


def add_param_flags(parser: argparse.ArgumentParser, params_class, skip: set[str] = frozenset()) -> list[str]:
    """Add one flag per parameter, with the parameter's own help; return the
    parameter names. Names in ``skip`` already have a flag (another method's,
    when several share one run) and are only listed."""
    hints = param_types(params_class)
    added = []
    for field in param_fields(params_class):
        if field.name in skip:
            added.append(field.name)
            continue
        annotation = hints.get(field.name, str)
        declared = declared_types(annotation)
        kinds = declared[0] if declared else (str,)
        default = field.default
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        choices = field.metadata.get("choices")
        shown = "" if default is None else f" (default: {default})"
        if kinds == (bool,):
            parser.add_argument(flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text + shown)
        else:
            parser.add_argument(flag(field.name), dest=field.name, type=text_converter(annotation), choices=choices,
                                default=argparse.SUPPRESS,
                                metavar=None if choices else "|".join(k.__name__.upper() for k in kinds),
                                help=help_text + shown)
        added.append(field.name)
    return added


def collect_params(namespace: argparse.Namespace, names: list[str]) -> dict:
    """The parameters the user actually gave (defaults stay the dataclass's)."""
    return {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}

