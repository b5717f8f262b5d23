"""`--threads` of `cnnviz run` (single and dataset runs) and what every CLI
process sets up first: the allocator and the thread count (runtime_tuning)."""

from __future__ import annotations

import argparse

from . import runtime_tuning


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", metavar="N",
                        help="compute threads per process, for torch and onnxruntime alike (default: every core for one "
                             "process; each worker of a dataset run gets cores / workers); fewer run steadier beside other work")


def start(args: argparse.Namespace) -> None:
    """Before any work: glibc's allocator keeps freed buffers for the next
    batch, and --threads (checked: a typed error names what is allowed)."""
    runtime_tuning.tune_allocator()
    runtime_tuning.set_threads(getattr(args, "threads", None))
