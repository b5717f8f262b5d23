"""Occlusion from the CLI, first and second run (issues 11 and 15): `cnnviz
run occlusion` on the built-in lite0 and skimage:chelsea as fresh processes,
against the same work warm in one process plus the CLI's start-up.

- first: a fresh process on an empty cache folder (it exports the ONNX copy,
  probes the runners, tunes the batch size and keeps its decision on disk);
- second: a fresh process on the cache the first one left (the decision comes
  from disk: no probe, no tuning, only the chosen runner is built);
- warm: the same `cnnviz_core.run("occlusion", ...)` repeated in one process
  after a first call (nothing left to decide or build);
- start-up: a fresh `cnnviz run occlusion` whose one window makes its work
  negligible (imports, the model, the image, writing the outputs).

Each is repeated (--repeats, fresh processes each time) and reported as
median and spread. Goal: second <= 2 x (warm + start-up), on the medians."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from common import fresh_process_seconds, median_spread, print_environment, print_table, repeat, spread_text, warn_if_busy

MODEL, IMAGE = "efficientnet_lite0", "skimage:chelsea"
GOAL = 2.0


def cnnviz_command() -> list[str]:
    script = shutil.which("cnnviz", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "cnnviz_core.cli"]


def cli_run(folder: str, cache: str, window: int, stride: int) -> float:
    """Wall seconds of one `cnnviz run occlusion` in a fresh process on ``cache``."""
    out = tempfile.mkdtemp(dir=folder)
    env = {**os.environ, "CNNVIZ_CACHE": cache, "CNNVIZ_PROGRESS": "0"}
    return fresh_process_seconds([*cnnviz_command(), "run", "occlusion", "--model", MODEL, "--image", IMAGE,
                                  "--window", str(window), "--stride", str(stride), "--out", out, "--quiet"], env)


def warm_seconds(cache: str, window: int, stride: int, repeats: int) -> list[float]:
    """The run repeated in one fresh process after a first call, as the CLI
    would make it (same allocator set-up), on the given cache."""
    code = f"""
import os, sys, time
os.environ["CNNVIZ_CACHE"] = {cache!r}
import cnnviz_core
from cnnviz_core import runtime_tuning
runtime_tuning.tune_allocator()
adapter = cnnviz_core.load_model({MODEL!r})
image = adapter.prepare([{IMAGE!r}])[0]
def once():
    start = time.perf_counter()
    cnnviz_core.run("occlusion", adapter, image, window={window}, stride={stride})
    return time.perf_counter() - start
once()
print(" ".join(str(once()) for _ in range({repeats})))
"""
    import subprocess

    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"warm run failed: {completed.stderr[-1500:]}")
    return [float(v) for v in completed.stdout.split()[-repeats:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per measurement (default 5)")
    parser.add_argument("--window", type=int, default=16, help="occlusion window (default 16: 729 windows with stride 8)")
    parser.add_argument("--stride", type=int, default=8, help="occlusion stride (default 8)")
    args = parser.parse_args()
    print_environment(f"bench_occlusion_cli: cnnviz run occlusion, {MODEL} on {IMAGE}, window {args.window} "
                      f"stride {args.stride}, {args.repeats} fresh processes each")
    with tempfile.TemporaryDirectory() as folder:
        def first_then_second() -> tuple[float, float]:
            cache = tempfile.mkdtemp(dir=folder)  # empty: the first run pays the export, the probe, the tuning
            return cli_run(folder, cache, args.window, args.stride), cli_run(folder, cache, args.window, args.stride)

        pairs = repeat(first_then_second, args.repeats)
        first, second = [p[0] for p in pairs], [p[1] for p in pairs]
        shared = tempfile.mkdtemp(dir=folder)
        cli_run(folder, shared, args.window, args.stride)  # the warm process and start-up find a kept decision
        warm = warm_seconds(shared, args.window, args.stride, args.repeats)
        startup = repeat(lambda: cli_run(folder, shared, 224, 224), args.repeats)  # one window: start-up only
    rows = [[name, median_spread(values)[0], spread_text(values)] for name, values in
            (("first run (empty cache)", first), ("second run (decision on disk)", second),
             ("warm, in one process", warm), ("start-up (one window)", startup))]
    print_table(["measurement", "median s", "range s (spread)"], rows, title="cnnviz run occlusion, wall seconds")
    bound = median_spread(warm)[0] + median_spread(startup)[0]
    ratio = median_spread(second)[0] / bound
    print(f"\nsecond run / (warm + start-up) = {ratio:.2f} on medians "
          f"({'meets' if ratio <= GOAL else 'MISSES'} <= {GOAL:g}); first / second = "
          f"{median_spread(first)[0] / median_spread(second)[0]:.2f}")
    warn_if_busy()


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
