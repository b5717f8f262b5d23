"""The dataset pass of the analyses (top_patches, tsne): throughput against
the forward-pass limit, peak memory against the number of images, and the
t-SNE fit on 5,000 points. Each configuration runs in its own fresh process
(CPU).

- Throughput: EfficientNet-Lite0 at 224 px over JPEG photographs (crops of
  scikit-image's) in a temporary folder, batch 32 (the analyses' own), with
  their default parameters (top_patches: every channel of the last spatial
  layer; tsne: the global pool). The t-SNE fit at the end of a tsne pass is
  excluded from the pass's time (it is timed on its own below); the rest of
  finish (top_patches' pictures) is included. The limit is the model's best
  batched forward throughput with the same adapter (eager torch,
  channels-last inputs).
- Peak memory: VmHWM of a fresh process from just before the run, for 1,000
  and 10,000 generated images streamed from an iterator (nothing held),
  with Lite0 at 64 px so that 10,000 images take minutes, not an hour, on 2
  cores. tsne keeps one feature vector and thumbnail per image, so it runs
  with max_points=1000 here (its memory is bounded by the cap); --full adds
  an uncapped tsne over 10,000 images (the fit takes several minutes).
- t-SNE: tsne's finish on 5,000 synthetic 50-d points in 10 clusters (PCA,
  t-SNE with the defaults, trustworthiness, kNN accuracy, pictures), and
  scikit-learn's TSNE fit alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import tempfile
import time

import numpy as np

from common import current_rss_mib, peak_rss_mib, print_environment, print_table, reset_peak_rss, sample_images

MODEL = "efficientnet_lite0"
PASS_IMAGES = 256
FORWARD_IMAGES = 64
FORWARD_BATCHES = (16, 32, 64)
MEMORY_COUNTS = (1000, 10000)
MEMORY_SIZE = 64
TSNE_POINTS = 5000


# -- what a child process runs ---------------------------------------------------
@dataclasses.dataclass
class Case:
    label: str
    build: str  # name of a builder below
    items: int
    kwargs: dict = dataclasses.field(default_factory=dict)


def quiet_scheduler():
    import cnnviz_core

    return cnnviz_core.Scheduler(device="cpu", progress=False)


def build_forward(batch: int, folder: str):
    """The limit: batched forwards of the adapter (channels-last inputs), no hooks."""
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL)
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))[:FORWARD_IMAGES]
    inputs, _ = adapter.prepare(paths)

    def run() -> float:
        start = time.perf_counter()
        for first in range(0, len(inputs), batch):
            adapter.logits(inputs[first : first + batch])
        return time.perf_counter() - start

    return run


def build_pass(methods: dict, dataset, size: int | None = None):
    """analyze(methods) over the dataset; returns the pass's seconds, the
    t-SNE fit excluded (tsne's finish is timed and subtracted)."""
    import cnnviz_core
    from cnnviz_plugins.analysis import tsne

    adapter = cnnviz_core.load_model(MODEL)
    if size is not None:  # fully convolutional with a global pool: any input size works
        adapter.config = dataclasses.replace(adapter.config, input_size=(size, size))
    finish_time = []
    original = tsne.Tsne.finish

    def timed_finish(self):
        start = time.perf_counter()
        try:
            return original(self)
        finally:
            finish_time.append(time.perf_counter() - start)

    tsne.Tsne.finish = timed_finish

    def run() -> float:
        finish_time.clear()
        start = time.perf_counter()
        cnnviz_core.analyze(methods, adapter, dataset() if callable(dataset) else dataset, scheduler=quiet_scheduler())
        return time.perf_counter() - start - sum(finish_time)

    return run


def build_folder_pass(methods: dict, folder: str):
    return build_pass(methods, folder)


def generated_images(count: int, size: int):
    """A one-shot iterator of smooth random images (labels by image number)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        yield Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR), index % 10


def build_memory_pass(methods: dict, count: int):
    return build_pass(methods, lambda: generated_images(count, MEMORY_SIZE), size=MEMORY_SIZE)


def build_tsne_finish(points: int, fit_only: bool):
    """tsne's finish (or sklearn's TSNE fit alone) on synthetic 50-d clusters."""
    from sklearn.manifold import TSNE

    from cnnviz_core import plots
    from cnnviz_plugins.analysis.tsne import Tsne, sample_priority

    plots.scatter_plot(np.zeros((2, 2)))  # matplotlib imported and set up before the timed call
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=points)
    centres = rng.normal(scale=4.0, size=(10, 50))
    features = (centres[labels] + rng.normal(size=(points, 50))).astype(np.float32)
    indices = np.arange(points)
    thumbs = rng.integers(0, 256, size=(points, 32, 32, 3), dtype=np.uint8)
    method = Tsne(adapter=None, params=Tsne.make_params())
    method.layer, method.dataset, method.total = "synthetic", None, points

    def run() -> float:
        start = time.perf_counter()
        if fit_only:
            TSNE(n_components=2, perplexity=30.0, max_iter=1000, init="pca", learning_rate="auto", random_state=0).fit_transform(features)
        else:
            method.chunks = [(features, labels, indices, [f"p{i}" for i in indices], thumbs, sample_priority(indices, 0))]
            method.finish()
        return time.perf_counter() - start

    return run


_run = None
_before = None


def _prepare(case: Case) -> None:
    global _run, _before
    _run = globals()[case.build](**case.kwargs)
    _before = current_rss_mib() if reset_peak_rss() else None


def _time() -> tuple[float, float]:
    start = time.process_time()
    seconds = _run()
    return seconds, time.process_time() - start


def _memory() -> tuple[float, float | None]:
    peak = peak_rss_mib()
    return peak, (None if _before is None else peak - _before)


def run_cases(cases: list[Case], repeats: int, warm_up: bool = True) -> dict[str, dict]:
    """Each case in its own spawned process; timed calls in rounds that visit
    every case once (a burst of load elsewhere hits all alike); best kept."""
    context = multiprocessing.get_context("spawn")
    pools = {}
    try:
        for case in cases:
            pools[case.label] = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
            pools[case.label].submit(_prepare, case).result()
            if warm_up:
                pools[case.label].submit(_time).result()
        samples = {case.label: [] for case in cases}
        for _ in range(repeats):
            for case in cases:
                samples[case.label].append(pools[case.label].submit(_time).result())
        results = {}
        for case in cases:
            peak, extra = pools[case.label].submit(_memory).result()
            times = [seconds for seconds, _ in samples[case.label]]
            best, median = min(times), float(np.median(times))
            # ratios and verdicts use the median; spread = slowest over fastest call
            results[case.label] = {"best_s": best, "median_s": median, "per_item_ms": 1000 * median / case.items,
                                   "spread": max(times) / best,
                                   "cpu_over_wall": samples[case.label][times.index(best)][1] / best, "peak_mib": peak, "extra_mib": extra}
        return results
    finally:
        for pool in pools.values():
            pool.shutdown()


# -- the three measurements ------------------------------------------------------
def write_photos(folder: str, count: int) -> None:
    """JPEGs of random crops (and mirrors) of the sample photographs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = sample_images(4)
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.5, 1.0))
        left, top = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        crop = photo.crop((left, top, left + side, top + side)).resize((256, 256))
        if index % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(os.path.join(folder, f"img{index:05d}.jpg"), quality=90)


def throughput(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write_photos(folder, PASS_IMAGES)
        cases = [Case(f"forward, batch {b}", "build_forward", FORWARD_IMAGES, {"batch": b, "folder": folder}) for b in FORWARD_BATCHES]
        passes = {"top_patches": {"top_patches": {}}, "tsne (fit excluded)": {"tsne": {}},
                  "top_patches + tsne (fit excluded)": {"top_patches": {}, "tsne": {}}}
        cases += [Case(f"pass: {label}", "build_folder_pass", PASS_IMAGES, {"methods": methods, "folder": folder})
                  for label, methods in passes.items()]
        results = run_cases(cases, repeats)
    limit = min(results[c.label]["per_item_ms"] for c in cases if c.build == "build_forward")
    rows = [[label, r["per_item_ms"], 1000 / r["per_item_ms"], r["per_item_ms"] / limit, r["spread"], r["cpu_over_wall"], r["peak_mib"]]
            for label, r in results.items()]
    print_table(["configuration", "ms/image", "images/s", "x limit", "worst/best", "cores used", "peak RSS MiB"], rows,
                title=f"Dataset pass, {MODEL} at 224 px, {PASS_IMAGES} JPEGs from a folder (median of {repeats}); "
                      f"limit = the fastest forward, {limit:.2f} ms/image")


def memory(full: bool) -> None:
    cases = []
    configs = {"top_patches": {"top_patches": {}}, "top_patches + tsne (max_points=1000)": {"top_patches": {}, "tsne": {"max_points": 1000}}}
    for count in MEMORY_COUNTS:
        for label, methods in configs.items():
            cases.append(Case(f"{label}, {count} images", "build_memory_pass", count, {"methods": methods, "count": count}))
    if full:
        cases.append(Case(f"tsne uncapped, {MEMORY_COUNTS[-1]} images", "build_memory_pass", MEMORY_COUNTS[-1],
                          {"methods": {"tsne": {}}, "count": MEMORY_COUNTS[-1]}))
    results = run_cases(cases, repeats=1, warm_up=False)
    rows = [[label, r["peak_mib"], r["extra_mib"], r["best_s"], 1000 * r["best_s"] / case.items]
            for case, (label, r) in zip(cases, results.items())]
    print_table(["configuration", "peak RSS MiB", "+RSS MiB during the run", "pass s (fit excl.)", "ms/image"], rows,
                title=f"Peak memory (VmHWM, fresh process, one run), {MODEL} at {MEMORY_SIZE} px, generated images from an iterator")


def tsne_fit() -> None:
    cases = [Case(f"tsne finish, {TSNE_POINTS} points, 50-d", "build_tsne_finish", TSNE_POINTS, {"points": TSNE_POINTS, "fit_only": False}),
             Case(f"sklearn TSNE fit alone, {TSNE_POINTS} points", "build_tsne_finish", TSNE_POINTS, {"points": TSNE_POINTS, "fit_only": True})]
    results = run_cases(cases, repeats=1, warm_up=False)
    rows = [[label, r["best_s"], r["cpu_over_wall"], r["peak_mib"], r["extra_mib"]] for label, r in results.items()]
    print_table(["configuration", "seconds", "cores used", "peak RSS MiB", "+RSS MiB"], rows,
                title="t-SNE (perplexity 30, 1,000 iterations, Barnes-Hut)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also an uncapped tsne over 10,000 images")
    parser.add_argument("--only", choices=("throughput", "memory", "tsne"), help="run one part")
    args = parser.parse_args()
    print_environment("cnnviz analysis pass benchmark")
    if args.only in (None, "throughput"):
        throughput(args.repeats)
    if args.only in (None, "memory"):
        memory(args.full)
    if args.only in (None, "tsne"):
        tsne_fit()


if __name__ == "__main__":
    main()
