"""glibc's default allocator against the thresholds cnnviz sets at start-up
and on its first model load (cnnviz_core.runtime_tuning.tune_allocator: mmap
threshold 32 MiB, trim threshold 1 GiB) on the Grad-CAM batch loop (lite0,
batch 16), each setting in its own fresh process, timed calls interleaved;
the verdict is on medians."""

from __future__ import annotations

import argparse

from common import Config, Workload, measure, print_environment, print_table, spread_text, warn_if_busy

import bench_gradcam


def case_gradcam(tuned: bool, batch: int) -> Workload:
    import os

    from cnnviz_core import runtime_tuning

    if not tuned:
        os.environ["CNNVIZ_MALLOC"] = "default"  # load_model would tune it otherwise
    runtime_tuning.tune_allocator()  # what `cnnviz`, load_model and every dataset worker do first
    bench_gradcam.BATCH = batch
    return bench_gradcam.case_cnnviz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per setting (default 7)")
    parser.add_argument("--batch", type=int, default=bench_gradcam.BATCH, help="images per Grad-CAM call (default 16)")
    args = parser.parse_args()
    print_environment(f"bench_allocator: cnnviz gradcam on {bench_gradcam.MODEL}, batch {args.batch}")
    configs = [Config("glibc defaults", case_gradcam, args.batch, {"tuned": False, "batch": args.batch}),
               Config("mallopt (cnnviz start-up)", case_gradcam, args.batch, {"tuned": True, "batch": args.batch})]
    results = measure(configs, args.repeats)
    rows = [[m.label, m.median_ms, m.best_ms, spread_text(m.times_s), 1000 * float(sorted(m.cpu_s)[len(m.cpu_s) // 2]) / m.items]
            for m in results.values()]
    print_table(["allocator", "median ms/image", "best", "spread (max/min)", "CPU ms/image (median)"], rows,
                title=f"Grad-CAM batch loop, {args.repeats} timed calls each")
    default, tuned = (results[c.label].median_ms for c in configs)
    print(f"\nmallopt / defaults = {tuned / default:.2f} on medians: "
          f"{'mallopt wins' if tuned < default else 'defaults win'} (cnnviz applies mallopt at start-up)")
    warn_if_busy()


if __name__ == "__main__":
    main()
