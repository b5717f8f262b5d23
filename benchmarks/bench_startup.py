"""CLI start-up (issue 11): wall time of `cnnviz --help`, `cnnviz methods` and
one `cnnviz run gradcam` (the built-in model on scikit-image's chelsea, saved
to a temporary PNG), each as fresh processes, as a user starts them.

Each command runs once untimed (Python writes its bytecode caches, the OS
caches the files), then --repeats times; the median wall time is reported,
with the median CPU time (user + system) of the process, which a busy machine
inflates less than the wall time. Bytecode caching is on whatever the calling
environment says (PYTHONDONTWRITEBYTECODE is dropped for the children): a
user's installation has its caches.

Then one `cnnviz methods` under ``python -X importtime``: import time by
package (self time, summed), what start-up is spent on.

Target: --help and methods under 1 s on an idle machine (torch, timm and
onnxruntime load only with a model)."""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import print_table, warn_if_busy

TARGET_S = 1.0


def cnnviz_command() -> list[str]:
    """The installed console script beside this Python, as a user runs it."""
    script = shutil.which("cnnviz", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "cnnviz_core.cli"]


def child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["CNNVIZ_PROGRESS"] = "0"
    return env


def timed_run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_breakdown(argv: list[str], top: int = 12) -> list[list]:
    """Self import time by package for one run under -X importtime."""
    completed = subprocess.run([sys.executable, "-X", "importtime", "-c",
                                "import sys; from cnnviz_core.cli import main; sys.exit(main(sys.argv[1:]))", *argv],
                               env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    by_package: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        package = name.split(".")[0]
        if package in sys.stdlib_module_names or package.startswith("_") or package == "encodings":
            package = "(standard library)"
        elif package in ("cnnviz_plugins", "cnnviz_adapters"):
            package = ".".join(name.split(".")[:2])
        by_package[package][0] += int(self_us) / 1000
        by_package[package][1] += 1
    rows = sorted(([name, round(ms, 1), count] for name, (ms, count) in by_package.items()), key=lambda row: -row[1])
    total = sum(row[1] for row in rows)
    return rows[:top] + [["total", round(total, 1), sum(row[2] for row in rows)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed fresh processes per command (default 5)")
    args = parser.parse_args()

    from skimage import data
    from PIL import Image

    cnnviz = cnnviz_command()
    print(f"cnnviz start-up: {' '.join(cnnviz)}, {args.repeats} fresh processes per command, median")
    warn_if_busy()
    with tempfile.TemporaryDirectory() as folder:
        image = os.path.join(folder, "chelsea.png")
        Image.fromarray(data.chelsea()).save(image)
        runs = iter(range(10**6))

        def gradcam() -> list[str]:  # a fresh --out each time: nothing to refuse or overwrite
            return [*cnnviz, "run", "gradcam", "--model", "efficientnet_lite0", "--image", image,
                    "--out", os.path.join(folder, f"out{next(runs)}"), "--quiet"]

        commands = {"cnnviz --help": lambda: [*cnnviz, "--help"], "cnnviz methods": lambda: [*cnnviz, "methods"],
                    "cnnviz run gradcam (lite0, chelsea)": gradcam}
        rows = []
        for label, make_argv in commands.items():
            timed_run(make_argv())  # warm-up: bytecode caches, file cache
            samples = [timed_run(make_argv()) for _ in range(args.repeats)]
            walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
            rows.append([label, statistics.median(walls), min(walls), max(walls), statistics.median(cpus)])
    print_table(["command", "median s", "min s", "max s", "median CPU s"], rows, "wall time per fresh process")
    print_table(["package", "self ms", "modules"], import_breakdown(["methods"]),
                "cnnviz methods: import time by package (python -X importtime, self time)")
    listing = [row for row in rows if row[0] in ("cnnviz --help", "cnnviz methods")]
    met = all(row[1] < TARGET_S for row in listing)
    print(f"\ntarget --help and methods under {TARGET_S:.0f} s: {'met' if met else 'NOT met'} "
          f"({', '.join(f'{row[0]} {row[1]:.2f} s' for row in listing)})")
    warn_if_busy()


if __name__ == "__main__":
    main()
