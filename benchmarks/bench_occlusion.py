"""Occlusion on one image: cnnviz (torch and ONNX adapters) against the forward
passes it cannot avoid, and against Captum's Occlusion. Each configuration
runs in its own fresh process (CPU)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile

import numpy as np

from common import (
    Config,
    Workload,
    max_relative_difference,
    measure,
    prepared_batch,
    print_environment,
    print_table,
    require,
    warn_if_busy,
)

MODEL = "efficientnet_lite0"
IMAGE = ("chelsea",)
TARGET = 285  # "Egyptian cat"
SIZE = 224
BATCH_SIZES = (1, 16, 32, 64)
MIN_IMAGES_PER_SAMPLE = 32  # small batches are repeated within a timed call, to even out the noise
CAPTUM_PER_EVAL = (16, 32, 64)
DEFAULT_BATCH = 64  # cnnviz occlusion's default batch of occluded copies


def window_count(window: int, stride: int, size: int = SIZE) -> int:
    """Windows per image: positions every ``stride``, plus one flush with the
    edge when the stride does not land there."""
    per_axis = math.ceil((size - window) / stride) + 1
    return per_axis * per_axis


# -- the limit: forward passes at the best batched throughput ---------------
def calls_per_sample(batch_size: int) -> int:
    return max(1, MIN_IMAGES_PER_SAMPLE // batch_size)


def case_torch_forward(batch_size: int, channels_last: bool) -> Workload:
    import cnnviz_core
    import torch

    adapter = cnnviz_core.load_model(MODEL)
    model = adapter.module
    inputs = torch.from_numpy(np.repeat(prepared_batch(adapter, 1, IMAGE), batch_size, axis=0))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            for _ in range(calls_per_sample(batch_size)):
                model(inputs)

    return Workload(run)


def case_onnx_forward(batch_size: int, path: str) -> Workload:
    import cnnviz_core
    import onnxruntime

    image = prepared_batch(cnnviz_core.load_model(path), 1, IMAGE)  # the adapter only preprocesses
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])  # runtime defaults
    feed = {session.get_inputs()[0].name: np.repeat(image, batch_size, axis=0)}

    def run():
        for _ in range(calls_per_sample(batch_size)):
            session.run(None, feed)

    return Workload(run)


# -- the tools ---------------------------------------------------------------
def case_cnnviz(spec: str, window: int, stride: int, batch_size: int | None = None) -> Workload:
    import cnnviz_core

    adapter = cnnviz_core.load_model(spec)
    image = prepared_batch(adapter, 1, IMAGE)
    params = {"window": window, "stride": stride} | ({} if batch_size is None else {"batch_size": batch_size})

    def run():
        # as a user calls it; the scheduler only to keep the CPU and mute the progress bar
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run("occlusion", adapter, image, target=TARGET, scheduler=scheduler, **params)

    return Workload(run, lambda result: result.maps[0])


def case_captum(window: int, stride: int, per_eval: int) -> Workload:
    import cnnviz_core
    import torch
    from captum.attr import Occlusion

    adapter = cnnviz_core.load_model(MODEL)
    inputs = torch.from_numpy(prepared_batch(adapter, 1, IMAGE))
    occlusion = Occlusion(adapter.module)

    def run():
        return occlusion.attribute(
            inputs, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
            baselines=0, target=TARGET, perturbations_per_eval=per_eval,
        )

    def check_data(attribution):
        channels = attribution[0].numpy()
        assert np.allclose(channels, channels[:1]), "one window spans the channels: they must be equal"
        return channels[0]

    return Workload(run, check_data)


# -- phases ------------------------------------------------------------------
def forward_configs(batch_size: int, onnx_path: str) -> list[Config]:
    images = batch_size * calls_per_sample(batch_size)
    return [
        Config(f"torch channels_first, batch {batch_size}", case_torch_forward, images, {"batch_size": batch_size, "channels_last": False}),
        Config(f"torch channels_last, batch {batch_size}", case_torch_forward, images, {"batch_size": batch_size, "channels_last": True}),
        Config(f"onnxruntime, batch {batch_size}", case_onnx_forward, images, {"batch_size": batch_size, "path": onnx_path}),
    ]


def find_fastest_forward(onnx_path: str, repeats: int) -> tuple[Config, int]:
    """Per-image forward time of every runtime, layout and batch size (runtimes
    interleaved per batch size). Returns the fastest configuration, and the best
    batch size for eager torch with channels-last inputs (what the torch adapter feeds)."""
    rows, results = [], {}
    for batch_size in BATCH_SIZES:
        configs = forward_configs(batch_size, onnx_path)
        measured = measure(configs, repeats)
        for config in configs:
            m = measured[config.label]
            results[config.label] = (config, m)
            rows.append([config.label, m.per_item_ms, m.median_ms, m.spread, m.cores_used, m.peak_mib, m.extra_mib])
    print_table(
        ["forward", "ms/image", "median", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows,
        title=f"Forward passes (at least {MIN_IMAGES_PER_SAMPLE} images per timed call, best of {repeats})",
    )
    def best(pairs):
        return min(pairs, key=lambda pair: pair[1].per_item_ms)

    fastest, m = best(results.values())
    torch_config, _ = best(p for p in results.values() if p[0].case is case_torch_forward and p[0].kwargs["channels_last"])
    print(f"fastest: {fastest.label}, {m.per_item_ms:.2f} ms/image; measured again beside each occlusion run")
    return fastest, torch_config.kwargs["batch_size"]


def measure_occlusion(window: int, stride: int, onnx_path: str, fastest: Config, torch_batch: int, repeats: int) -> None:
    windows = window_count(window, stride)
    params = {"window": window, "stride": stride}
    limit_label = f"limit: {windows} x {fastest.label}"
    cnnviz_torch, cnnviz_onnx = "cnnviz occlusion, torch adapter", "cnnviz occlusion, ONNX adapter"
    configs = [
        # the limit's forward, in the same rounds as the tools so that they meet the same load
        dataclasses.replace(fastest, label=limit_label),
        Config(cnnviz_torch, case_cnnviz, 1, {"spec": MODEL, **params}),
        Config(cnnviz_onnx, case_cnnviz, 1, {"spec": onnx_path, **params}),
    ]
    if torch_batch != DEFAULT_BATCH:
        label = f"cnnviz occlusion, torch adapter, batch_size={torch_batch}"
        configs.append(Config(label, case_cnnviz, 1, {"spec": MODEL, "batch_size": torch_batch, **params}))
    configs += [
        Config(f"captum Occlusion, {per_eval} per eval", case_captum, 1, {"per_eval": per_eval, **params})
        for per_eval in CAPTUM_PER_EVAL
    ]
    results = measure(configs, repeats)
    limit_ms = windows * results[limit_label].per_item_ms
    captum_best = min((m for label, m in results.items() if label.startswith("captum")), key=lambda m: m.best_s)
    rows = []
    for label, m in results.items():
        total_ms = limit_ms if label == limit_label else m.per_item_ms
        median_ms = windows * m.median_ms if label == limit_label else m.median_ms
        rows.append([
            label, total_ms, median_ms, total_ms / limit_ms,
            m.best_s / captum_best.best_s if label.startswith("cnnviz") else None,
            m.spread, m.cores_used, m.peak_mib, m.extra_mib,
        ])
    print_table(
        ["configuration", "ms/image", "median", "x limit", "x best captum", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows,
        title=f"Occlusion, window {window} stride {stride}: {windows} windows; best of {repeats}",
    )
    torch_map = results[cnnviz_torch].check
    checks = [
        [f"cnnviz torch vs {captum_best.label}", max_relative_difference(torch_map[None], captum_best.check[None])],
        ["cnnviz ONNX vs cnnviz torch", max_relative_difference(torch_map[None], results[cnnviz_onnx].check[None])],
    ]
    if (SIZE - window) % stride:
        print("(the stride does not land on the edge: cnnviz adds an edge-flush window that Captum does not; maps differ at the edge)")
    print_table(["pair", "max |diff| / max |map|"], checks, title="Agreement of the per-pixel maps")
    for label in (cnnviz_torch, cnnviz_onnx):
        ratio = results[label].per_item_ms / limit_ms
        print(f"{label}: {ratio:.2f} x limit ({'meets' if ratio <= 1.2 else 'MISSES'} DESIGN 6: within 1.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (default 3)")
    parser.add_argument("--full", action="store_true", help="also window 16 stride 8 (729 windows; several minutes more)")
    args = parser.parse_args()
    require("captum.attr", "captum")
    print_environment(f"bench_occlusion: {MODEL} at {SIZE} px, one image ({IMAGE[0]}), class {TARGET}")

    import cnnviz_core
    from cnnviz_adapters.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(cnnviz_core.load_model(MODEL), os.path.join(folder, "lite0.onnx"))
        fastest, torch_batch = find_fastest_forward(onnx_path, args.repeats)
        settings = [(32, 16)] + ([(16, 8)] if args.full else [])
        for window, stride in settings:
            measure_occlusion(window, stride, onnx_path, fastest, torch_batch, args.repeats)
    warn_if_busy()


if __name__ == "__main__":
    main()
