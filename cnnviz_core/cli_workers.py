"""`--workers` / `--devices` of dataset analyses (`cnnviz run top_patches
--dataset DIR --workers 2`): the pass split over worker processes whose
partial states merge (cnnviz_core.analysis_parallel)."""

from __future__ import annotations

import argparse


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes sharing the dataset pass, each with its own model replica (default: 1, "
                             "this process); the result equals one process's")
    parser.add_argument("--devices", metavar="LIST",
                        help="one worker per device: cpu (with --workers), cuda:0,cuda:1 or all (every GPU); "
                             "default: --device")
