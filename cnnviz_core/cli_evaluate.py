"""``cnnviz evaluate``: score attribution methods with metrics and write the
leaderboard (see :func:`cnnviz_core.evaluate`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .errors import InputError

EXAMPLE = "cnnviz evaluate --model efficientnet_lite0 --methods gradcam rise --metrics deletion insertion --image cat.png --out eval/"


def add_evaluate_parser(commands) -> None:
    from .model_options import add_model_flags

    parser = commands.add_parser("evaluate", help="score attribution methods with metrics into a leaderboard: " + EXAMPLE,
                                 description="Every method x every metric over the images, model-free references beside "
                                             "them, one leaderboard (CSV, PNG, HTML, curve plots) in --out; rerun the same "
                                             "command to resume.")
    parser.add_argument("--model", required=True, help="a model name, timm:NAME or a path to an .onnx file")
    parser.add_argument("--weights", help="state dict for a timm:NAME model")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD", help="attribution methods to score")
    parser.add_argument("--metrics", nargs="+", required=True, metavar="METRIC", help="metrics (see `cnnviz methods --kind metric`)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", nargs="+", metavar="IMAGE", help="image files or skimage:NAME samples")
    source.add_argument("--dataset", metavar="SRC", help="a folder of images, a list file or a glob")
    parser.add_argument("--maps-from", metavar="STORE", help="a dataset run's output folder (cnnviz run METHOD --dataset ... "
                                                             "--out STORE): its methods' maps are read, not computed; its "
                                                             "dataset is the default --dataset")
    parser.add_argument("--out", required=True, help="output folder: leaderboard files and the per-chunk work kept for resuming")
    parser.add_argument("--target", metavar="T", help="class index or label name for every image (default: each image's top-1)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME.PARAM=VALUE", dest="settings",
                        help="a parameter of a method or metric, e.g. --set deletion.steps=64 --set rise.masks=2000 (repeatable)")
    parser.add_argument("--annotations", metavar="PATH", help="boxes JSON or masks folder for localization metrics")
    parser.add_argument("--batch-size", type=int, default=8, help="images per chunk, the unit of work and of resuming (default: 8)")
    parser.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                        help="score the model-free reference maps (random, uniform, Sobel) beside the methods (default: yes)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse finished work kept in --out by an earlier run with the same settings (default: yes)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    add_model_flags(parser)


def _value(text: str) -> Any:
    """A --set value: an int, a float, true/false, or text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(settings: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {name: {} for name in names}
    for setting in settings:
        key, equals, value = setting.partition("=")
        owner, dot, param = key.partition(".")
        if not equals or not dot or not param:
            raise InputError(f"--set {setting!r}: write NAME.PARAM=VALUE, e.g. --set deletion.steps=64")
        if owner not in found:
            raise InputError(f"--set {setting!r}: {owner!r} is none of the methods or metrics given ({', '.join(names)})")
        found[owner][param.replace("-", "_")] = _value(value)
    return found


def cmd_evaluate(args) -> int:
    from . import api
    from .evaluation import evaluate
    from .model_options import model_options
    from .output_paths import check_output_folder

    if len(set(args.methods)) != len(args.methods) or len(set(args.metrics)) != len(args.metrics):
        raise InputError("a method or metric is named twice")
    settings = parse_settings(args.settings, [*args.methods, *args.metrics])
    check_output_folder(args.out)
    options = {**({"weights": args.weights} if args.weights else {}), **model_options(args)}
    adapter = api.load_model(args.model, **options)
    target = args.target
    if target is not None and target.lstrip("-").isdigit():
        target = int(target)

    def report(method: str, metric: str, chunk: int, reused: bool) -> None:
        if not args.quiet:
            print(f"  {method} x {metric}, chunk {chunk + 1}{' (kept from an earlier run)' if reused else ''}", file=sys.stderr)

    evaluation = evaluate(adapter, {m: settings[m] for m in args.methods}, {m: settings[m] for m in args.metrics},
                          args.image, dataset=args.dataset, target=target, out=args.out, references=args.references,
                          annotations=args.annotations, maps_from=args.maps_from, batch_size=args.batch_size, device=args.device,
                          resume=args.resume, on_unit=report)
    print("\n".join(evaluation.summary_lines()))
    print(f"leaderboard: {os.path.join(args.out, 'leaderboard.html')} (and leaderboard.csv, leaderboard.png, scores.csv)")
    return 0
