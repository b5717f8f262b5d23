"""The CLI's model flags: ``--mean R G B --std R G B --input-size H W (or
HxW) --interpolation NAME``, for any model, override what the model says
about itself (timm's pretrained config, an ONNX file's sidecar or metadata
props); ``--output-key KEY`` picks the logits of a model with several outputs."""

from __future__ import annotations

import argparse
from typing import Any

from .config import INTERPOLATIONS, parse_input_size
from .errors import InputError


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model preprocessing (overrides what the model file or timm says)")
    group.add_argument("--mean", nargs=3, type=float, metavar=("R", "G", "B"), help="per-channel mean of [0, 1] pixels")
    group.add_argument("--std", nargs=3, type=float, metavar=("R", "G", "B"), help="per-channel standard deviation")
    group.add_argument("--input-size", nargs="+", metavar="SIZE", help="input size: H W, HxW, or N for N x N")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="how images are resized to the input size")
    group.add_argument("--output-key", metavar="KEY", help="for a model returning a tuple or dict (auxiliary heads): the "
                       "key, index or ONNX output name that holds the logits")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The preprocessing options given on the command line, for load_model."""
    options: dict[str, Any] = {}
    for name in ("mean", "std", "interpolation"):
        if getattr(args, name, None) is not None:
            options[name] = tuple(value) if isinstance(value := getattr(args, name), list) else value
    if getattr(args, "input_size", None) is not None:
        try:
            options["input_size"] = parse_input_size(args.input_size)
        except ValueError as error:
            raise InputError(f"--input-size: {error}") from None
    if getattr(args, "output_key", None) is not None:
        key = args.output_key
        options["output"] = int(key) if key.lstrip("-").isdigit() else key
    if "std" in options and min(options["std"]) <= 0:
        raise InputError(f"--std must be positive, got {' '.join(map(str, options['std']))}")
    return options
