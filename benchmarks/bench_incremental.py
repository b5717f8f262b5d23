"""Incremental occlusion (Krypton's incremental inference, Nakandala et al.,
SIGMOD 2019) against the forward-pass limit: the windows of one image times
the best per-image forward time (eager torch, channels_last, inference_mode,
best of batch sizes 1/16/32/64). Each configuration runs in its own fresh
process (CPU); peak memory is the peak RSS of that process.

Krypton reported 2.1x (ResNet18) and 5.4x (VGG16) over full re-inference on a CPU.

Time is measured on an evenly spread subset of the windows and extrapolated
to all of them (every window costs the same: its patches have the same sizes):
    all = subset + (subset - clean) * (windows / subset_windows - 1)
where "clean" is the clean image's pass (one batch-1 forward), which each
image pays once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from common import Config, Workload, measure, prepared_batch, print_environment, print_table, warn_if_busy

SIZE = 224
IMAGES = ("chelsea", "coffee")  # alternated, so that every timed call is a new image
BATCH_SIZES = (1, 16, 32, 64)
SETTINGS = ((16, 8), (32, 16))
MODELS = {
    # name: (cnnviz spec, images per timed forward call, windows timed per call)
    "efficientnet_lite0": ("efficientnet_lite0", 16, 64),  # built-in ImageNet weights
    "resnet18": ("timm:resnet18", 16, 64),  # random init: timing only
    "vgg16": ("timm:vgg16", 8, 32),  # heavy: fewer images per call
}


def window_boxes(window: int, stride: int, size: int = SIZE) -> list[tuple[int, int, int, int]]:
    """All windows of one image: every ``stride``, plus one flush with the edge."""
    starts = sorted(set(range(0, size - window + 1, stride)) | {size - window})
    return [(y, y + window, x, x + window) for y in starts for x in starts]


def spread_subset(boxes: list, count: int) -> list:
    if count <= 0 or count >= len(boxes):
        return boxes
    picks = np.linspace(0, len(boxes) - 1, count).round().astype(int)
    return [boxes[i] for i in picks]


# -- the limit -------------------------------------------------------------------------
def case_forward(spec: str, batch_size: int, images_per_call: int) -> Workload:
    import cnnviz_core
    import torch

    adapter = cnnviz_core.load_model(spec)
    model = adapter.module.eval().to(memory_format=torch.channels_last)
    image = prepared_batch(adapter, 1, IMAGES[:1])
    inputs = torch.from_numpy(np.repeat(image, batch_size, axis=0)).contiguous(memory_format=torch.channels_last)
    calls = max(1, images_per_call // batch_size)

    def run():
        with torch.inference_mode():
            for _ in range(calls):
                model(inputs)

    return Workload(run)


def forward_items(batch_size: int, images_per_call: int) -> int:
    return batch_size * max(1, images_per_call // batch_size)


# -- incremental occlusion ---------------------------------------------------------------
def case_incremental(spec: str, window: int, stride: int, subset: int) -> Workload:
    import cnnviz_core
    import torch
    from cnnviz_plugins.attribution.occlusion.incremental.engine import IncrementalOcclusion

    adapter = cnnviz_core.load_model(spec)
    module = adapter.module.eval()
    images = [torch.from_numpy(batch[0]) for batch in (prepared_batch(adapter, 1, (name,)) for name in IMAGES)]
    fill = torch.zeros_like(images[0])  # the baseline 0 of the normalized input space
    boxes = spread_subset(window_boxes(window, stride), subset)
    started = time.perf_counter()
    engine = IncrementalOcclusion.build(module, (1, 3, SIZE, SIZE))
    build_s = time.perf_counter() - started
    # exactness on a few windows, against the model on the occluded images (untimed)
    few = boxes[:: max(1, len(boxes) // 6)][:6]
    batch = images[0][None].repeat(len(few), 1, 1, 1)
    for k, (y0, y1, x0, x1) in enumerate(few):
        batch[k, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
    with torch.inference_mode():
        expected = module(batch.contiguous(memory_format=torch.channels_last))
    difference = float((engine.occluded_logits(images[0], few, fill) - expected).abs().max())
    described = engine.describe()
    facts = {"build_s": build_s, "max_abs_diff": difference, "flop_fraction": engine.estimated_flop_fraction((window, window)),
             "full_from": described["full_from"], "incremental_ops": described["incremental_ops"]}
    calls = [0]

    def run():
        calls[0] += 1  # a new image each call: its clean activations are computed again
        return engine.occluded_logits(images[calls[0] % len(images)], boxes, fill)

    return Workload(run, lambda _output: facts)


# -- phases -----------------------------------------------------------------------------------
def best_forward(name: str, spec: str, images_per_call: int, repeats: int, batch_sizes) -> tuple[Config, dict]:
    configs = [
        Config(f"{name} forward, batch {b}", case_forward, forward_items(b, images_per_call),
               {"spec": spec, "batch_size": b, "images_per_call": images_per_call})
        for b in batch_sizes
    ]
    measured = measure(configs, repeats)
    rows = [[c.label, measured[c.label].per_item_ms, measured[c.label].spread, measured[c.label].cores_used,
             measured[c.label].peak_mib] for c in configs]
    print_table(["forward (channels_last, inference_mode)", "ms/image", "worst/best", "cores used", "peak RSS MiB"], rows,
                title=f"{name}: forward passes, median of {repeats}")
    best = min(configs, key=lambda c: measured[c.label].per_item_ms)
    smallest = min(configs, key=lambda c: c.kwargs["batch_size"])
    return best, {"batch1_ms": measured[smallest.label].per_item_ms}


def measure_model(name: str, repeats: int, subset_override: int | None, batch_sizes) -> list[list]:
    spec, images_per_call, subset = MODELS[name]
    subset = subset_override if subset_override is not None else subset
    best, forward_facts = best_forward(name, spec, images_per_call, max(1, repeats - 1), batch_sizes)
    limit_label = f"{best.label} (limit)"
    configs = [dataclasses.replace(best, label=limit_label)]
    for window, stride in SETTINGS:
        count = len(spread_subset(window_boxes(window, stride), subset))
        configs.append(Config(f"{name} incremental w{window}/s{stride}", case_incremental, count,
                              {"spec": spec, "window": window, "stride": stride, "subset": subset}))
    results = measure(configs, repeats)  # the limit's forward in the same rounds, meeting the same load
    forward_ms = results[limit_label].per_item_ms
    clean_ms = forward_facts["batch1_ms"]  # one batch-1 forward: the clean pass each image pays once
    rows = []
    for (window, stride), config in zip(SETTINGS, configs[1:]):
        m = results[config.label]
        windows = len(window_boxes(window, stride))
        timed_ms = 1000 * m.median_s
        total_ms = timed_ms + max(timed_ms - clean_ms, 0.0) * (windows / m.items - 1)
        limit_ms = windows * forward_ms
        facts = m.check
        rows.append([
            name, f"{window}/{stride}", windows, m.items, total_ms, limit_ms, limit_ms / total_ms,
            1 / facts["flop_fraction"], m.spread, m.peak_mib, results[limit_label].peak_mib, facts["build_s"],
            facts["max_abs_diff"], facts["full_from"],
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration (default 2)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--windows", type=int, default=None,
                        help="windows timed per call, then extrapolated (default 64; 32 for vgg16; 0 = all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES), help="forward batch sizes tried for the limit")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every measured process (default: torch's); 1 is steadier on a machine shared with other work")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned processes
        import torch

        torch.set_num_threads(args.threads)
    print_environment(f"bench_incremental: {', '.join(args.models)} at {SIZE} px, one image per call ({' / '.join(IMAGES)} alternated)")
    rows = []
    for name in args.models:
        rows += measure_model(name, args.repeats, args.windows, args.batch_sizes)
    print_table(
        ["model", "window/stride", "windows", "timed", "incremental ms", "limit ms", "speed-up", "FLOP ratio",
         "worst/best", "peak RSS MiB", "limit peak MiB", "build s", "max |diff|", "full from"],
        rows,
        title=f"Incremental occlusion vs the forward-pass limit (median of {args.repeats}; 'timed' windows per call, "
              "extrapolated to 'windows'; speed-up = limit / incremental; FLOP ratio = full / incremental multiply-adds)",
    )
    print("Krypton (SIGMOD 2019, CPU): 2.1x on ResNet18, 5.4x on VGG16")
    warn_if_busy()


if __name__ == "__main__":
    main()
