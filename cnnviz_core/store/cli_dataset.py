"""`cnnviz run METHOD [METHOD ...] --model M --dataset SRC --out OUT` for
attribution methods: one store for the whole dataset (see run_dataset)."""

from __future__ import annotations

import argparse

from ..errors import InputError


def parse_dataset_run(argv: list[str], parser_class) -> argparse.Namespace | None:
    """The namespace of a dataset run of attribution methods, or None when
    argv is another command (no --dataset, or not attribution methods)."""
    from ..cli_params import add_param_flags
    from ..cli_runtime import add_threads_flag
    from ..registry import get_registry

    if len(argv) < 2 or argv[0] != "run" or not any(a == "--dataset" or a.startswith("--dataset=") for a in argv):
        return None
    registry = get_registry()
    names = []
    for token in argv[1:]:
        if token.startswith("-") or token not in registry.methods:
            break
        names.append(token)
    if not names or registry.method(names[0]).kind != "attribution":
        return None
    classes = [registry.method(n) for n in names]
    others = [c.name for c in classes if c.kind != "attribution"]
    if others:
        raise InputError(f"a dataset run of attribution methods cannot include {', '.join(others)}; run analyses separately")
    if len(set(names)) != len(names):
        raise InputError("a method is named twice")
    parser = parser_class(prog=f"cnnviz run {' '.join(names)}",
                          description="attribution maps of a whole dataset into one resumable store (Zarr maps + CSV index)")
    parser.add_argument("--model", required=True, help="a model name, timm:NAME or a path to an .onnx file")
    parser.add_argument("--weights", help="state dict for a timm:NAME model (.pth or .safetensors)")
    parser.add_argument("--dataset", required=True, metavar="SRC",
                        help="a folder (class subfolders are the labels), a list file (one path per line, optional label) or a glob")
    parser.add_argument("--out", required=True, help="the store's folder; rerun the same command to resume")
    parser.add_argument("--target", metavar="T", help="class index, label name or top1 (default), for every image")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored map precision (default: float32)")
    parser.add_argument("--chunk-size", type=int, default=128, help="images per chunk, the unit of work and of resuming (default: 128)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: one worker process per device (default); ray: one Ray actor per CPU slot or GPU (pip install 'cnnviz[ray]')")
    parser.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    parser.add_argument("--devices", default="cpu", help="cpu (default), cuda:0,cuda:1 or all: one worker per device")
    parser.add_argument("--workers", type=int, help="CPU worker processes with --devices cpu (default: 1)")
    add_threads_flag(parser)
    parser.add_argument("--overwrite", action="store_true", help="start a new store where one with other settings is")
    parser.add_argument("--quiet", action="store_true", help="accepted for symmetry with other runs")
    seen: set[str] = set()
    param_names = {}
    for cls in classes:
        param_names[cls.name] = add_param_flags(parser, cls.Params, skip=seen)
        seen |= set(param_names[cls.name])
    args = parser.parse_args(argv[1 + len(names):])
    args.command, args.method, args.param_names = "dataset-run", names, param_names
    return args


def cmd_dataset_run(args) -> int:
    from ..cli_params import collect_params
    from ..output_paths import check_output_folder
    from .dataset_run import run_dataset

    check_output_folder(args.out)
    params = {name: collect_params(args, args.param_names[name]) for name in args.method}
    if args.weights and not args.model.startswith("timm:"):
        raise InputError("--weights goes with a timm:NAME model")
    results = run_dataset(params, args.model, args.dataset, out=args.out, target=args.target, dtype=args.dtype,
                          chunk_size=args.chunk_size, backend=args.backend, devices=args.devices,
                          workers=args.workers, overwrite=args.overwrite, ray_address=args.ray_address,
                          model_options={"weights": args.weights} if args.weights else None)
    summary = results.summary
    print(f"{'+'.join(args.method)}: {summary.get('ok', 0)} images explained, {summary.get('skipped', 0)} skipped, "
          f"{summary.get('error', 0)} failed; store in {args.out} (read it with cnnviz_core.open_results)")
    for row in [r for r in results.rows if r["status"] != "ok"][:3]:
        print(f"  {row['status']} {row['path']}: {row['error']}")
    return 0
