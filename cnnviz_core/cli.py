"""The ``cnnviz`` command line: methods, models, plugins, run, demo, export-onnx.

Exit 0 on success; exit 2 with a one-line message on bad input, on an output
path that cannot be written (checked before any work) and on any OSError met
while reading or writing. Warnings are printed as ``cnnviz: warning: ...``,
one line each, from whichever thread raised them."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import api, atomic, render
from .cli_evaluate import add_evaluate_parser, cmd_evaluate
from .errors import CnnvizError, InputError
from .model_options import add_model_flags, model_options
from .output_paths import check_output_file, check_output_folder
from .progress import progress_default
from .registry import get_registry
from .scheduler import Scheduler
from .store.cli_dataset import cmd_dataset_run, parse_dataset_run

EXIT_BAD_INPUT = 2


class CliError(CnnvizError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnviz", description="Visualize, understand and explain convolutional networks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    methods = commands.add_parser("methods", help="list methods; with --model, which run on that model")
    methods.add_argument("--model", help="a model name, timm:NAME or a path to an .onnx file")
    methods.add_argument("--kind", choices=("attribution", "synthesis", "analysis", "metric"))

    models = commands.add_parser("models", help="list registered models (wildcards allowed)")
    models.add_argument("pattern", nargs="?", default="*")
    models.add_argument("--layers", metavar="MODEL", help="list the layers of MODEL instead")

    plugins = commands.add_parser("plugins", help="list loaded plugins and those that failed")
    plugins.add_argument("--verbose", action="store_true", help="show the traceback of each failure")

    run = commands.add_parser("run", help="run a method: cnnviz run METHOD --model M --image FILE... --out DIR "
                                          "(analyses: cnnviz run A [B ...] --model M --dataset DIR --out DIR)")
    run_methods = run.add_subparsers(dest="method", required=True, metavar="METHOD", parser_class=_Parser)
    registry = get_registry()
    for name, method_class in registry.methods.items():
        if method_class.kind == "metric":
            continue  # metrics run through `cnnviz evaluate`
        try:  # on a scratch parser first: a method whose flags argparse refuses must not break every command
            add_run_flags(_Parser(prog=name), [method_class])
        except Exception as error:  # noqa: BLE001 - reported as that plugin's failure
            registry.report_failure(method_class.plugin, f"method {name!r} cannot have CLI flags: {type(error).__name__}: {error}")
            continue
        sub = run_methods.add_parser(name, help=method_class.summary(), description=method_class.summary())
        add_run_flags(sub, [method_class])
    demo = commands.add_parser("demo", help="run every method that applies on sample photos with the built-in model")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--model", default="efficientnet_lite0", help="model to run (default: efficientnet_lite0)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--only", nargs="+", metavar="METHOD", help="run only these methods")
    demo.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                      help="also run every method that applies on the model's ONNX export (default: yes)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar (also: CNNVIZ_PROGRESS=0)")

    add_evaluate_parser(commands)  # cnnviz evaluate: metrics over methods (cnnviz_core/cli_evaluate.py)
    export = commands.add_parser("export-onnx", help="export a torch model to ONNX with a preprocessing sidecar")
    export.add_argument("model")
    export.add_argument("output", help="path of the .onnx file to write (its sidecar is OUTPUT.json)")
    export.add_argument("--weights", help="state dict for a timm:NAME model")
    add_model_flags(export)  # recorded in the sidecar
    return parser


def add_run_flags(parser: argparse.ArgumentParser, method_classes: list) -> None:
    """The flags of `cnnviz run` for one method, or for several analyses that
    share one dataset pass: common flags by kind, then each method's own."""
    from .cli_params import add_param_flags
    from .cli_runtime import add_threads_flag

    kinds = {cls.kind for cls in method_classes}
    parser.add_argument("--model", required=True, help="a model name, timm:NAME or a path to an .onnx file")
    parser.add_argument("--weights", help="state dict for a timm:NAME model (.pth or .safetensors)")
    add_model_flags(parser)
    if kinds & {"attribution", "synthesis"}:
        needs_image = any(cls.kind == "attribution" or getattr(cls, "needs_image", False) for cls in method_classes)
        if needs_image:
            parser.add_argument("--image", nargs="+", required=True, metavar="FILE",
                                help="input image file(s), or skimage:NAME for a photograph bundled with scikit-image (skimage:chelsea)")
        parser.add_argument("--target", nargs="+", metavar="T", required=not needs_image,
                            help="class index, label name, top1 (default), layer:channel (the channel's spatial mean) or layer:channel@y,x (one unit); one, or one per image"
                            if needs_image else "what to make: class index, label name, layer:channel (the channel's spatial mean) or layer:channel@y,x (one unit); one item per target")
    if "analysis" in kinds:
        if any(getattr(cls, "uses_dataset", False) for cls in method_classes):
            parser.add_argument("--dataset", required=True, metavar="DIR",
                                help="folder of images (class subfolders are the labels)")
            from .cli_workers import add_worker_flags

            add_worker_flags(parser)
        parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                            help="continue an interrupted pass from its checkpoint in --out (default: yes)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda:N")
    add_threads_flag(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different run of the method already saved in --out (default: refuse, naming what differs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (also: CNNVIZ_PROGRESS=0)")
    names: dict[str, list[str]] = {}
    seen: set[str] = set()
    for cls in method_classes:
        # analyses run together share a flag of the same name (--layer, --batch-size)
        names[cls.name] = add_param_flags(parser, cls.Params, skip=seen)
        seen |= set(names[cls.name])
    parser.set_defaults(param_names=names)


def _load(spec: str, weights: str | None = None, preprocessing: dict | None = None):
    options = {**({"weights": weights} if weights else {}), **(preprocessing or {})}
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
    for clash in registry.clashes:
        if clash.kind == "method":
            print(f"{clash.name:<22} CLASH: registered by plugins {', '.join(clash.plugins)}; see `cnnviz plugins`")
    if registry.failures:
        names = ", ".join(sorted({f.name for f in registry.failures}))
        print(f"cnnviz: warning: plugin(s) failed to load: {names}; see `cnnviz plugins`", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    if args.layers:
        from .cli_models import print_layers

        return print_layers(_load(args.layers))
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
        where = info.distribution or f"registered in code: {info.module}"
        print(f"{info.name:<20} [{where}] {'; '.join(contributed)}")
    for failure in registry.failures:
        print(f"FAILED {failure.name} [{failure.distribution or 'registered in code'}] {failure.value}: {failure.error}")
        if args.verbose and failure.details:
            print(failure.details)
    for clash in registry.clashes:
        print(f"CLASH {clash.message()}")
    for name in registry.disabled:
        print(f"DISABLED {name} (named in CNNVIZ_DISABLE_PLUGINS)")
    return 0


def cmd_run(args) -> int:
    from .cli_params import collect_params

    methods = [args.method] if isinstance(args.method, str) else list(args.method)
    registry = get_registry()
    classes = [registry.method(name) for name in methods]
    # everything the user typed is checked before the model loads
    check_output_folder(args.out)
    params = {name: collect_params(args, args.param_names[name]) for name in methods}
    for method_class in classes:
        method_class.make_params(**params[method_class.name])
    adapter = _load(args.model, args.weights, model_options(args))
    for method_class in classes:
        api.check_capabilities(method_class, adapter)
    scheduler = Scheduler(device=args.device, progress=progress_default(False if args.quiet else None, default=True))
    kind = classes[0].kind
    if kind == "analysis":
        return _run_analyses(args, adapter, scheduler, params)
    if kind == "synthesis":
        return _run_synthesis(args, adapter, scheduler, params[args.method])
    return _run_attribution(args, adapter, scheduler, classes[0], params[args.method])


def _run_attribution(args, adapter, scheduler, method_class, params) -> int:
    import dataclasses

    from .images import source_name, unique_names
    from .results import AttributionResult
    from .targets import parse_targets

    out, overwrite = args.out, args.overwrite
    # The inputs' names and targets as the run will see them: a clash with
    # another run saved in --out is refused before any work.
    names = unique_names([source_name(path) for path in args.image])
    targets = parse_targets(args.target, len(names), adapter.num_classes, adapter.labels)
    plan = AttributionResult.plan(out, args.method, adapter.describe(), dataclasses.asdict(method_class.make_params(**params)),
                                  names, targets, adapter.labels).check(overwrite)
    written: list[str] = []

    def save_batch(part, offset: int) -> None:
        # each batch's files are written (atomically) as soon as the batch finishes
        plan.claim()
        written.extend(part.save_items(out))

    result = api.run(args.method, adapter, args.image, args.target, scheduler=scheduler, on_batch=save_batch, **params)
    written = result.save(out, items=False, already_written=written, overwrite=overwrite)
    plan.finish(written)
    _print_result(args.method, written, out, result)
    return 0


def _print_result(method: str, written: list[str], out: str, result) -> None:
    """Where the files went, then the result's own summary, a line per item."""
    print(f"{method}: wrote {len(written)} files to {out}")
    for line in result.summary_lines():
        print(f"  {line}")


def _run_synthesis(args, adapter, scheduler, params) -> int:
    import dataclasses

    from .output_records import item_stem
    from .results_synthesis import SynthesisResult
    from .synthesis_inputs import synthesis_items

    method_class = get_registry().method(args.method)
    instance = api._instance(method_class, adapter, params, None, scheduler)
    pixels, targets, names = synthesis_items(instance, adapter, getattr(args, "image", None), args.target)
    out, overwrite = args.out, args.overwrite
    plan = SynthesisResult.plan(out, args.method, adapter.describe(), dataclasses.asdict(instance.params), names, targets,
                                adapter.labels).check(overwrite)
    best: dict[int, str] = {}

    def keep_best(index: int, image, objective: float, step: int) -> None:
        # the best image so far, rewritten atomically while the run goes: an
        # interrupted run keeps it
        plan.claim()
        os.makedirs(out, exist_ok=True)
        best[index] = os.path.join(out, f"{item_stem(names[index], args.method, targets[index], adapter.labels)}.best.png")
        atomic.write_bytes(best[index], render.png_bytes(render.image_to_uint8(image)))

    result = instance.run(pixels, targets, names, keep_best=keep_best)
    written = result.save(out, overwrite=overwrite, already_written=sorted(set(best.values())))
    plan.finish(written)
    _print_result(args.method, written, out, result)
    return 0


def _run_analyses(args, adapter, scheduler, params) -> int:
    import dataclasses

    from .results_analysis import AnalysisResult

    dataset = getattr(args, "dataset", None)
    for name, values in params.items():  # a clash with another run saved in --out is refused before the pass
        method_class = get_registry().method(name)
        described = os.fspath(dataset) if dataset is not None and method_class.uses_dataset else None
        AnalysisResult.plan(args.out, name, adapter.describe(), dataclasses.asdict(method_class.make_params(**values)),
                            described).check(args.overwrite)
    results = api.analyze(params, adapter, dataset, scheduler=scheduler, out=args.out, resume=args.resume,
                          workers=getattr(args, "workers", None), devices=getattr(args, "devices", None))
    for name, result in results.items():
        written = result.save(args.out, overwrite=args.overwrite)
        _print_result(name, written, args.out, result)
        skipped = result.metadata.get("skipped") or []
        if skipped:
            print(f"  skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]['item']}: {skipped[0]['error']}")
    return 0


def parse_several_analyses(argv: list[str]) -> argparse.Namespace | None:
    """`cnnviz run A B ... --flags`: several analyses over one dataset pass.
    Returns None when argv is not of that form (one method: the usual parser)."""
    if len(argv) < 3 or argv[0] != "run":
        return None
    registry = get_registry()
    names = []
    for token in argv[1:]:
        if token.startswith("-") or token not in registry.methods:
            break
        names.append(token)
    if len(names) < 2:
        return None
    classes = [registry.method(n) for n in names]
    not_analyses = [c.name for c in classes if c.kind != "analysis"]
    if not_analyses:
        raise InputError(f"only analyses run together over one dataset pass; {', '.join(not_analyses)} must run on its own")
    if len(set(names)) != len(names):
        raise InputError("a method is named twice")
    parser = _Parser(prog=f"cnnviz run {' '.join(names)}", description="several analyses over one pass of the dataset")
    add_run_flags(parser, classes)
    args = parser.parse_args(argv[1 + len(names):])
    args.command, args.method = "run", names
    return args


def cmd_demo(args) -> int:
    from .demo import run_demo

    check_output_folder(args.out)
    index = run_demo(args.out, model=args.model, device=args.device, only=args.only, onnx=args.onnx,
                     progress=progress_default(False if args.quiet else None, default=True))
    print(f"demo written to {index}")
    return 0


def cmd_export(args) -> int:
    from cnnviz_adapters.onnx_export import export_onnx

    if not args.output.lower().endswith(".onnx"):
        raise InputError("the output path must end with .onnx")
    check_output_file(args.output)
    path = export_onnx(_load(args.model, args.weights, model_options(args)), args.output)
    print(f"wrote {path} and {path}.json")
    return 0


COMMANDS = {"methods": cmd_methods, "models": cmd_models, "plugins": cmd_plugins, "run": cmd_run,
            "demo": cmd_demo, "export-onnx": cmd_export, "dataset-run": cmd_dataset_run,
            "evaluate": cmd_evaluate}


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Replaces ``warnings.showwarning`` during a CLI run: one line, no source."""
    stream = file or sys.stderr
    try:
        stream.write(f"cnnviz: warning: {' '.join(str(message).split())}\n")
        stream.flush()
    except (OSError, ValueError):  # stderr gone: nothing sensible left to do
        pass


def _refuse_clashing_names(argv: list[str]) -> None:
    """`cnnviz run NAME` where two plugins register NAME: an error naming
    both, before argparse would call it an unknown choice."""
    if argv[:1] == ["run"]:
        for token in argv[1:]:
            if token.startswith("-"):
                break
            get_registry().check_name("method", token)


def _os_error_line(error: OSError) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason}: {error.filename}" if error.filename else reason


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():  # restores the usual display when main returns
        warnings.showwarning = _print_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        try:
            argv = sys.argv[1:] if argv is None else list(argv)
            _refuse_clashing_names(argv)
            args = parse_dataset_run(argv, _Parser) or parse_several_analyses(argv) or build_parser().parse_args(argv)
        except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
            return int(exit_request.code or 0)
        from .cli_runtime import start

        start(args)  # allocator and --threads, before any work
        return COMMANDS[args.command](args)
    except CnnvizError as error:
        message = " ".join(str(error).split())
        print(f"cnnviz: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # disk full, permission denied, a file vanished: one line, like bad input
        print(f"cnnviz: error: {' '.join(_os_error_line(error).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cnnviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
