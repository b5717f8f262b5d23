"""Turn a method's Params dataclass into argparse flags, and back."""

from __future__ import annotations

import argparse
import types
import typing

from .method import param_fields, param_types


def _base_type(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_param_flags(parser: argparse.ArgumentParser, params_class, skip: set[str] = frozenset()) -> list[str]:
    """Add one flag per parameter, typed, with the parameter's own help; return
    the parameter names. Names in ``skip`` already have a flag (another
    method's, when several share one run) and are only listed."""
    hints = param_types(params_class)
    added = []
    for field in param_fields(params_class):
        if field.name in skip:
            added.append(field.name)
            continue
        kind = _base_type(hints.get(field.name, str))
        default = field.default
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        choices = field.metadata.get("choices")
        shown = "" if default is None else f" (default: {default})"
        if kind is bool:
            parser.add_argument(flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text + shown)
        else:
            parser.add_argument(flag(field.name), dest=field.name, type=kind if kind in (int, float, str) else str,
                                choices=choices, default=argparse.SUPPRESS, metavar=None if choices else kind.__name__.upper(),
                                help=help_text + shown)
        added.append(field.name)
    return added


def collect_params(namespace: argparse.Namespace, names: list[str]) -> dict:
    """The parameters the user actually gave (defaults stay the dataclass's)."""
    return {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}

