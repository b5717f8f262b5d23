"""Dataset runs: throughput of `gradcam` and `occlusion` over a folder of
images (lite0 at a small input size) on the `local` backend (one in-process
worker, and one worker process per core) and on `ray` (a local cluster, one
actor per core), against the single-process limit: the method's per-image
cost on decoded inputs, measured in the same run, times the number of images.
Goals (DESIGN 6): local >= 0.9x the limit's throughput, ray >= 0.8x local on
the same cores; peak memory of each (all the processes of a run together).

Every measurement is a fresh process, run in rounds that visit every
configuration once; the table gives the median and the spread (min-max) over
the rounds. Ray's cluster start-up is not timed (it is printed); the actors'
start-up (each loads its model replica) is, as the local workers' is.

The parts of a chunk's cost (decode, method, store write) and Ray's cost per
task are measured too; they feed the scaling model of benchmarks/README.md,
whose projection for 8 GPUs and for a cluster is printed at the end."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import median_spread, print_environment, print_table, sample_images, spread_text

MODEL = "efficientnet_lite0"
PARAMS = {"gradcam": {}, "occlusion": {"window": 32, "stride": 16}}  # at 64 px: 3 x 3 windows per image
CHUNK = 128
LIMIT_IMAGES = 128  # decoded inputs the limit's per-image cost is measured on (one chunk)
GPUS = 8
DISPATCH_CALLS = 200


# -- the child: one measurement in a fresh process ---------------------------
def child(config: str, method: str, folder: str, size: int, out: str) -> dict:
    """Time one configuration; returns what the parent tabulates."""
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL, input_size=(size, size))
    images = sorted(os.listdir(folder))
    if config == "limit":
        return limit(cnnviz_core, adapter, method, [os.path.join(folder, name) for name in images])
    if config == "parts":
        return parts(adapter, method, folder, out)
    report: dict = {"images": len(images)}
    options = {"backend": "local", "workers": 1}
    if config == "local-workers":
        options["workers"] = cores()
    elif config == "ray":
        report.update(start_ray())
        options = {"backend": "ray"}
    start = time.perf_counter()
    results = cnnviz_core.run_dataset({method: PARAMS[method]}, adapter, folder, out=out, chunk_size=CHUNK, **options)
    report["wall_s"] = time.perf_counter() - start
    report["ok"] = results.summary.get("ok", 0)
    if config == "ray":
        import ray

        ray.shutdown()
    return report


def limit(cnnviz_core, adapter, method: str, paths: list[str]) -> dict:
    """The method's per-image cost on decoded inputs: one chunk's worth,
    batched as a dataset worker runs it (no decoding, no store), times the
    number of images. Each call gets a fresh method instance, set up untimed
    (a worker sets up once per run): an instance remembers the images it saw
    (occlusion reuses an image's passes), which a run never repeats."""
    from cnnviz_core.registry import get_registry
    from cnnviz_core.scheduler import Scheduler
    from cnnviz_core.targets import parse_targets

    inputs, _ = adapter.prepare(paths[:LIMIT_IMAGES])
    cls = get_registry().method(method)
    targets = parse_targets(None, len(inputs), adapter.num_classes, adapter.labels)

    def timed_call() -> float:
        instance = cls(adapter, cls.make_params(**PARAMS[method]), Scheduler(device="cpu", progress=False))
        instance.setup()
        start = time.perf_counter()
        with adapter.session():
            instance.scheduler.map_batches(lambda a, b: instance.attribute(inputs[a:b], targets[a:b]), len(inputs),
                                           instance.batch_size(), desc=method)
        return time.perf_counter() - start

    timed_call()  # warm-up
    times = [timed_call() for _ in range(3)]
    per_image = statistics.median(times) / len(inputs)
    return {"images": len(paths), "wall_s": per_image * len(paths), "method_s": per_image}


def parts(adapter, method: str, folder: str, out: str) -> dict:
    """Per image: decoding (read, resize, normalize: what the prefetch thread
    does) and writing to the store (the method's real maps of one chunk, so
    that they compress as in a run, into their Zarr chunk; index rows; journal
    entry: what a worker does after a chunk's last batch)."""
    import zarr

    import cnnviz_core
    from cnnviz_core.dataset import Dataset
    from cnnviz_core.store import layout

    batch = _run_batch(adapter, method)
    source = Dataset.from_folder(folder)
    start = time.perf_counter()
    decoded = sum(len(b.indices) for b in source.batches(adapter.config, batch))
    decode_s = (time.perf_counter() - start) / decoded
    height, width = adapter.config.input_size
    os.makedirs(os.path.join(out, layout.INDEX_FOLDER))
    os.makedirs(os.path.join(out, layout.JOURNAL_FOLDER))
    array = zarr.open_group(os.path.join(out, layout.MAPS), mode="w").create_array(
        method, shape=(decoded, height, width), chunks=(CHUNK, height, width), dtype="float32", fill_value=float("nan"))
    first_chunk, _ = adapter.prepare([os.path.join(folder, name) for name in sorted(os.listdir(folder))[:CHUNK]])
    maps = cnnviz_core.run(method, adapter, first_chunk, **PARAMS[method]).maps.astype("float32")
    names = layout.columns([method])
    start = time.perf_counter()
    for chunk, first in enumerate(range(0, decoded, CHUNK)):
        last = min(first + CHUNK, decoded)
        array[first:last] = maps[[i % len(maps) for i in range(first, last)]]
        rows = [{name: "" for name in names} | {"index": i, "path": f"{folder}/{i:06d}.jpg", "status": "ok"} for i in range(first, last)]
        layout.write_chunk_index(out, chunk, rows, names)
        layout.mark_done(out, chunk)
    write_s = (time.perf_counter() - start) / decoded
    stored = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(os.path.join(out, layout.MAPS)) for f in files)
    return {"decode_s": decode_s, "write_s": write_s, "batch": batch, "map_bytes": stored / decoded}


def _run_batch(adapter, method: str) -> int:
    """The batch a dataset run of ``method`` decodes (its batch size)."""
    from cnnviz_core.registry import get_registry

    cls = get_registry().method(method)
    return cls(adapter, cls.make_params(**PARAMS[method]), None).batch_size()


def start_ray() -> dict:
    """A local cluster of this machine's cores (untimed for the run), and the
    driver's cost of one actor task round trip (what dispatching a chunk costs)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    started = time.perf_counter() - start

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, value):
            return value

    echo = Echo.remote()
    ray.get(echo.echo.remote(0))
    start = time.perf_counter()
    for i in range(DISPATCH_CALLS):
        ray.get(echo.echo.remote(i))
    dispatch = (time.perf_counter() - start) / DISPATCH_CALLS
    ray.kill(echo)
    return {"cluster_start_s": started, "dispatch_s": dispatch}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- the parent: rounds of fresh processes, memory of each process tree ------
def tree_memory_mib(root: int) -> float:
    """Proportional set size (shared pages split between the processes that map
    them) of ``root`` and all its descendants, in MiB; VmRSS where PSS is not
    readable."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    ppid = int(stream.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        total += _memory_kib(pid)
    return total / 1024


def _memory_kib(pid: int) -> float:
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as stream:
                for line in stream:
                    if line.startswith(field):
                        return float(line.split()[1])
        except OSError:
            continue
    return 0.0


def measure(config: str, method: str, folder: str, size: int, scratch: str) -> dict:
    """One fresh process; its report and the peak memory of its process tree,
    sampled every 0.1 s."""
    out = tempfile.mkdtemp(prefix="store-", dir=scratch)
    command = [sys.executable, os.path.abspath(__file__), "--child", config, method, folder, str(size), out]
    if config == "ray" and in_own_network():
        # a loopback-only network namespace: Ray binds the machine's address otherwise (DESIGN 5)
        command = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + " ".join(command)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_memory_mib(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    if process.returncode != 0:
        sys.exit(f"{config} {method} failed:\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["peak_mib"] = peak[0]
    return report


def in_own_network() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None


def write_images(folder: str, count: int, size: int) -> None:
    """``count`` JPEGs a little larger than the model's input (so each is
    resized as a real dataset's would be): shifted crops of the sample photos."""
    os.makedirs(folder, exist_ok=True)
    photos = sample_images(4)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = min(photo.size)
        offset = (i * 7) % max(1, photo.size[0] - side + 1)
        crop = photo.crop((offset, 0, offset + side, side)).resize((size + size // 4,) * 2)
        crop.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


# -- the scaling model (benchmarks/README.md, "Scaling model") --------------
def chunk_rate(method_s: float, decode_s: float, write_s: float, batch: int) -> float:
    """Images/s of one worker: a chunk decodes its first batch, then decodes
    each next batch while the method works on the current one, then writes."""
    chunk_s = batch * decode_s + CHUNK * max(method_s, decode_s) + CHUNK * write_s
    return CHUNK / chunk_s


def projection(method: str, measured: dict, gpu_ms: float | None, cluster_nodes: int, fs_mb_s: float) -> list[str]:
    c_m, c_d, c_w, t_q = measured["method_s"], measured["decode_s"], measured["write_s"], measured.get("dispatch_s")
    b, bytes_per_map, k = measured["batch"], measured["map_bytes"], cores()
    lines = [f"{method}: measured per image: method {c_m * 1e3:.2f} ms (this CPU, {k} threads), decode {c_d * 1e3:.2f} ms, "
             f"store write {c_w * 1e3:.3f} ms ({bytes_per_map / 1024:.1f} KiB stored); batch {b}, chunk {CHUNK}"
             + (f"; Ray task round trip {t_q * 1e3:.2f} ms" if t_q else "")]
    per_core = chunk_rate(c_m * k, c_d, c_w, b)  # one single-threaded worker per core
    lines.append(f"  this machine: {k} CPU workers -> {k * per_core:.3g} images/s")
    worker_cap = chunk_rate(0.0, c_d, c_w, b)  # a GPU worker whose method took no time: its one decode thread bounds it
    gpu = f"a GPU worker is bounded by its decode thread at {worker_cap:.0f} images/s"
    if gpu_ms is not None:
        gpu = f"at {gpu_ms:.2f} ms/image on the GPU, a GPU worker does {chunk_rate(gpu_ms / 1e3, c_d, c_w, b):.0f} images/s"
        worker_cap = chunk_rate(gpu_ms / 1e3, c_d, c_w, b)
    machine = GPUS * worker_cap  # given 2 free cores per GPU worker: its decode thread and its main thread
    lines.append(f"  {GPUS} GPUs, one machine: {gpu}; {GPUS} workers -> {machine:.0f} images/s "
                 f"(with {2 * GPUS} cores free for their decode and main threads)")
    fs_cap = fs_mb_s * 1e6 / bytes_per_map
    driver_cap = CHUNK / t_q if t_q else float("inf")
    cluster = min(cluster_nodes * machine, fs_cap, driver_cap)
    bound = min((cluster_nodes * machine, "the GPU workers' decode and method"), (fs_cap, "the shared filesystem's writes"),
                (driver_cap, "the driver's task dispatch"))[1]
    driver = f", {CHUNK} / round trip = {driver_cap:.0f}" if t_q else ""  # without Ray measured: not a term
    lines.append(f"  cluster of {cluster_nodes} such machines: min({cluster_nodes} x {machine:.0f}, "
                 f"{fs_mb_s:.0f} MB/s / {bytes_per_map / 1024:.1f} KiB = {fs_cap:.0f}{driver}) = {cluster:.0f} images/s, "
                 f"bounded by {bound}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the dataset (default: 2000)")
    parser.add_argument("--size", type=int, default=64, help="model input size in pixels (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of measurements (default: 3)")
    parser.add_argument("--methods", nargs="+", default=list(PARAMS), choices=list(PARAMS))
    parser.add_argument("--no-ray", action="store_true", help="skip the ray backend")
    parser.add_argument("--gpu-ms", type=float, help="the method's per-image cost on a GPU, for the projection "
                        "(measure it with the GPU benchmark); without it the projection gives the bound that holds for any GPU")
    parser.add_argument("--cluster-nodes", type=int, default=4, help="machines of the projected cluster (default: 4)")
    parser.add_argument("--fs-mb-s", type=float, default=1000.0, help="shared filesystem write bandwidth for the projection (default: 1000 MB/s)")
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        args.no_ray = True
        print("ray is not installed (pip install 'cnnviz[ray]'): the ray backend is skipped")
    k = cores()
    print_environment(f"Dataset runs: {MODEL} at {args.size} px, {args.images} images, {args.rounds} rounds")
    sys.stdout.flush()
    configs = ["limit", "local", "local-workers"] + ([] if args.no_ray else ["ray"])
    labels = {"limit": "limit (per-image cost x N)", "local": "local, 1 worker (in process)",
              "local-workers": f"local, {k} worker processes", "ray": f"ray, {k} actors (local cluster)",
              "parts": "decode and store write"}
    scratch = tempfile.mkdtemp(prefix="cnnviz-bench-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        folder = os.path.join(scratch, "images")
        write_images(folder, args.images, args.size)
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_number in range(1, args.rounds + 1):
            for method in args.methods:
                for config in configs + ["parts"]:
                    report = measure(config, method, folder, args.size, scratch)
                    runs.setdefault((method, config), []).append(report)
                    took = f"{report['wall_s']:.1f} s" if "wall_s" in report else f"decode {report['decode_s'] * 1e3:.2f} ms/image"
                    print(f"  round {round_number}: {method}, {labels[config]}: {took}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows, verdicts, scaling = [], [], []
    for method in args.methods:
        rate = {c: statistics.median(args.images / r["wall_s"] for r in runs[method, c]) for c in configs}
        for config in configs:
            walls = [r["wall_s"] for r in runs[method, config]]
            wrong = [r for r in runs[method, config] if config != "limit" and r.get("ok") != args.images]
            rows.append([method, labels[config], median_spread(walls)[0], spread_text(walls), rate[config],
                         rate[config] / rate["limit"], max(r["peak_mib"] for r in runs[method, config]),
                         "" if not wrong else f"{wrong[0].get('ok')} ok!"])
        best_local = max(rate["local"], rate["local-workers"])
        verdicts.append(f"{method}: local {best_local / rate['limit']:.2f}x the limit's throughput (goal >= 0.9)")
        measured = {name: statistics.median(r[name] for r in runs[method, "parts"]) for name in ("decode_s", "write_s", "map_bytes")}
        measured.update(batch=runs[method, "parts"][0]["batch"],
                        method_s=statistics.median(r["method_s"] for r in runs[method, "limit"]))
        if "ray" in configs:
            verdicts.append(f"{method}: ray {rate['ray'] / rate['local-workers']:.2f}x local with {k} workers "
                            f"(goal >= 0.8); Ray's cluster start-up (untimed) "
                            f"{statistics.median(r['cluster_start_s'] for r in runs[method, 'ray']):.1f} s")
            measured["dispatch_s"] = statistics.median(r["dispatch_s"] for r in runs[method, "ray"])
        scaling += projection(method, measured, args.gpu_ms, args.cluster_nodes, args.fs_mb_s)
    print_table(["method", "configuration", "median s", "min-max s (spread)", "images/s", "x limit rate", "peak MiB", ""],
                rows, title="Wall time of the whole run (median, range over rounds) and throughput (on the median)")
    print("\n" + "\n".join(verdicts))
    print("\nScaling model (benchmarks/README.md), from the parts measured above:\n" + "\n".join(scaling))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        print(json.dumps(child(*sys.argv[2:])))
    else:
        main()
