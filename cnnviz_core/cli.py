"""The ``cnnviz`` command line: methods, models, plugins, run, demo, export-onnx.

Exit 0 on success; exit 2 with a one-line message on bad input."""

from __future__ import annotations

import argparse
import sys

from . import api
from .errors import CnnvizError, InputError
from .registry import get_registry
from .scheduler import Scheduler

EXIT_BAD_INPUT = 2


class CliError(CnnvizError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .cli_params import add_param_flags

    parser = _Parser(prog="cnnviz", description="Visualize, understand and explain convolutional networks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    methods = commands.add_parser("methods", help="list methods; with --model, which run on that model")
    methods.add_argument("--model", help="a model name, timm:NAME or a path to an .onnx file")
    methods.add_argument("--kind", choices=("attribution", "synthesis", "analysis"))

    models = commands.add_parser("models", help="list registered models (wildcards allowed)")
    models.add_argument("pattern", nargs="?", default="*")
    models.add_argument("--layers", metavar="MODEL", help="list the layers of MODEL instead")

    plugins = commands.add_parser("plugins", help="list loaded plugins and those that failed")
    plugins.add_argument("--verbose", action="store_true", help="show the traceback of each failure")

    run = commands.add_parser("run", help="run a method: cnnviz run METHOD --model M --image FILE... --out DIR")
    run_methods = run.add_subparsers(dest="method", required=True, metavar="METHOD", parser_class=_Parser)
    for name, method_class in get_registry().methods.items():
        sub = run_methods.add_parser(name, help=method_class.summary(), description=method_class.summary())
        sub.add_argument("--model", required=True, help="a model name, timm:NAME or a path to an .onnx file")
        sub.add_argument("--weights", help="state dict for a timm:NAME model (.pth or .safetensors)")
        sub.add_argument("--image", nargs="+", required=True, metavar="FILE", help="input image file(s)")
        sub.add_argument("--target", nargs="+", metavar="T",
                         help="class index, label name, top1 (default) or layer:channel[@y,x]; one, or one per image")
        sub.add_argument("--device", default="auto", help="auto (default), cpu or cuda:N")
        sub.add_argument("--out", required=True, help="output folder")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.set_defaults(param_names=add_param_flags(sub, method_class.Params))

    demo = commands.add_parser("demo", help="run every method that applies on sample photos with the built-in model")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--model", default="efficientnet_lite0", help="model to run (default: efficientnet_lite0)")
    demo.add_argument("--device", default="auto")

    export = commands.add_parser("export-onnx", help="export a torch model to ONNX with a preprocessing sidecar")
    export.add_argument("model")
    export.add_argument("output", help="path of the .onnx file to write (its sidecar is OUTPUT.json)")
    export.add_argument("--weights", help="state dict for a timm:NAME model")
    return parser


def _load(spec: str, weights: str | None = None):
    options = {"weights": weights} if weights else {}
    if weights and not (isinstance(spec, str) and spec.startswith("timm:")):
        raise InputError("--weights goes with a timm:NAME model")
    return api.load_model(spec, **options)


def cmd_methods(args) -> int:
    registry = get_registry()
    adapter = _load(args.model) if args.model else None
    rows = []
    for name, cls in registry.methods.items():
        if args.kind and cls.kind != args.kind:
            continue
        needs = ", ".join(sorted(str(c) for c in cls.requires))
        status = ""
        if adapter is not None:
            missing = api.missing_capabilities(cls, adapter)
            status = "runs" if not missing else "missing: " + ", ".join(sorted(str(m) for m in missing))
        rows.append((name, cls.kind, needs, status, cls.summary()))
    for name, kind, needs, status, summary in rows:
        line = f"{name:<22} {kind:<12} needs {needs:<32}"
        print(f"{line} {status:<28} {summary}" if adapter is not None else f"{line} {summary}")
    return 0


def cmd_models(args) -> int:
    if args.layers:
        adapter = _load(args.layers)
        default = adapter.default_layer()
        for name in adapter.layers():
            print(f"{name}{'   (default target layer)' if name == default else ''}")
        return 0
    registry = get_registry()
    for name in api.models(args.pattern):
        print(f"{name:<24} {registry.models[name].description}")
    print("also: timm:NAME (any timm architecture, --weights FILE for its state dict), PATH.onnx")
    return 0


def cmd_plugins(args) -> int:
    registry = get_registry()
    for info in registry.plugins():
        contributed = [f"{label}: {', '.join(items)}" for label, items in
                       (("methods", info.methods), ("adapters", info.adapters), ("models", info.models)) if items]
        print(f"{info.name:<20} [{info.distribution or 'registered in code'}] {'; '.join(contributed)}")
    for failure in registry.failures:
        print(f"FAILED {failure.name} [{failure.distribution}] {failure.value}: {failure.error}")
        if args.verbose:
            print(failure.details)
    return 0


def cmd_run(args) -> int:
    from .cli_params import collect_params

    adapter = _load(args.model, args.weights)
    method_class = get_registry().method(args.method)
    api.check_capabilities(method_class, adapter)
    params = collect_params(args, args.param_names)
    scheduler = Scheduler(device=args.device, progress=not args.quiet)
    out = args.out
    # Everything is checked before the first file is written; each batch's
    # files are written (atomically) as soon as the batch finishes.
    written: list[str] = []
    result = api.run(args.method, adapter, args.image, args.target, scheduler=scheduler,
                     on_batch=lambda part, offset: written.extend(part.save_items(out)), **params)
    written = result.save(out, items=False, already_written=written)
    print(f"{args.method}: wrote {len(written)} files to {out}")
    for i, name in enumerate(result.names):
        print(f"  {name}: explained {result.label(i)} (score {float(result.scores[i]):.4g})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    index = run_demo(args.out, model=args.model, device=args.device)
    print(f"demo written to {index}")
    return 0


def cmd_export(args) -> int:
    from cnnviz_adapters.onnx_export import export_onnx

    if not args.output.lower().endswith(".onnx"):
        raise InputError("the output path must end with .onnx")
    path = export_onnx(_load(args.model, args.weights), args.output)
    print(f"wrote {path} and {path}.json")
    return 0


COMMANDS = {"methods": cmd_methods, "models": cmd_models, "plugins": cmd_plugins, "run": cmd_run,
            "demo": cmd_demo, "export-onnx": cmd_export}


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
            return int(exit_request.code or 0)
        return COMMANDS[args.command](args)
    except CnnvizError as error:
        message = " ".join(str(error).split())
        print(f"cnnviz: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cnnviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
