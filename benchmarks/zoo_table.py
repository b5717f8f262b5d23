"""The README's "Models" table, generated from the zoo conformance test's own
list (tests/zoo_models.py): every registered method on every zoo architecture,
on torch and (methods that need no gradients) on its ONNX export, each pair
ran or refused-why. Prints the per-family summary (README) and, with --full,
the method x architecture matrix. About as long as tests/test_zoo.py.

    .venv/bin/python benchmarks/zoo_table.py [--full]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import torch  # noqa: E402

import zoo_models as zoo  # noqa: E402
from cnnviz_core.errors import CnnvizError  # noqa: E402


def outcome(name: str, adapter, entry) -> str:
    """"ran", or "refused: <the error's first clause>"."""
    if isinstance(adapter, CnnvizError):
        return f"refused: {_short(adapter)}"
    try:
        zoo.check_result(name, zoo.run_pair(name, adapter, entry.size), entry.size)
    except CnnvizError as error:
        return f"refused: {_short(error, name)}"
    except Exception as error:  # what tests/test_zoo.py fails on: shown, not hidden
        return f"FAILED: {type(error).__name__}: {_short(error)}"
    return "ran"


def _short(error: Exception, name: str = "") -> str:
    """The error's first clause, without the method name it starts with or
    the details in parentheses after it, at most ~70 characters."""
    text = str(error).removeprefix(f"{name}: ").removeprefix(f"{name} ")
    text = re.split(r" \((?=[A-Za-z])", text.split(";")[0].split(". ")[0])[0]  # keep shapes, drop asides
    return text if len(text) <= 70 else text[:70].rsplit(" ", 1)[0] + " ..."


def _model(entry, kind: str, folder: str):
    try:
        return zoo.torch_model(entry) if kind == "torch" else zoo.onnx_model(entry, folder)
    except CnnvizError as error:
        return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also print the method x architecture matrix")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.process_time()
    results: dict[tuple[str, str, str], str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for entry in zoo.ZOO:
            for kind in ("torch", "onnx"):
                adapter = _model(entry, kind, folder)
                for name in zoo.method_names():
                    if zoo.runs_on(name, kind):
                        results[entry.family, name, kind] = outcome(name, adapter, entry)
                        print(f"{entry.family:15s} {kind:5s} {name:22s} {results[entry.family, name, kind]}", file=sys.stderr)
    print("| family | timm model (tiny) | covers | torch: ran | ONNX: ran | refused (why) |")
    print("|---|---|---|---|---|---|")
    for entry in zoo.ZOO:
        cells = []
        for kind in ("torch", "onnx"):
            mine = {name: text for (family, name, k), text in results.items() if family == entry.family and k == kind}
            cells.append(f"{sum(t == 'ran' for t in mine.values())}/{len(mine)}")
        refused: dict[str, list[str]] = {}  # reason → methods (with the adapter where only one refused)
        for name in zoo.method_names():
            texts = {k: results.get((entry.family, name, k)) for k in ("torch", "onnx")}
            bad = {k: t for k, t in texts.items() if t is not None and t != "ran"}
            for k, text in bad.items():
                label = name if len(bad) == len([t for t in texts.values() if t is not None]) else f"{name} ({k})"
                methods = refused.setdefault(text.removeprefix("refused: "), [])
                if label not in methods:
                    methods.append(label)
        why = "; ".join(f"{', '.join(methods)}: {reason}" for reason, methods in refused.items()) or "none"
        print(f"| {entry.family} | `{entry.timm_name}` | {entry.what} | {cells[0]} | {cells[1]} | {why} |")
    if args.full:
        methods = zoo.method_names()
        print("\n| method | " + " | ".join(e.family for e in zoo.ZOO) + " |")
        print("|---" * (len(zoo.ZOO) + 1) + "|")
        for name in methods:
            row = []
            for entry in zoo.ZOO:
                marks = [results[entry.family, name, k].split(":")[0] + f" ({k})"
                         for k in ("torch", "onnx") if (entry.family, name, k) in results]
                row.append(", ".join(marks))
            print(f"| {name} | " + " | ".join(row) + " |")
    print(f"\n{len(results)} pairs, {time.process_time() - started:.0f} s of CPU", file=sys.stderr)


if __name__ == "__main__":
    main()
