"""Occlusion of one image on three timm models (tf_efficientnet_lite0 with its
built-in weights, resnet18, vgg16; 224 px), window 16 stride 8 and window 32
stride 16: cnnviz against the forward passes it cannot avoid (the limit) and
against Captum's Occlusion at its best perturbations_per_eval, with the peak
memory of each. Each configuration runs in its own fresh process (CPU).

The limit is N windows x the best per-image forward time over eager torch
(channels-last) and onnxruntime at batch sizes 1 to 64: it is measured on a
few batches, never on N windows. cnnviz always runs every window. Captum,
which would take minutes per call, is timed on a subset of the windows (a
larger stride, the same window) and its time scaled to the full count where
the tables say so (--captum-full: every window)."""

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

# label -> cnnviz model spec; resnet18 and vgg16 carry timm's random initial
# weights (nothing is downloaded): the time of a forward does not depend on them
MODELS = {"tf_efficientnet_lite0": "efficientnet_lite0", "resnet18": "timm:resnet18", "vgg16": "timm:vgg16"}
SETTINGS = ((16, 8), (32, 16))
IMAGE = ("chelsea",)
TARGET = 285  # "Egyptian cat": every tool explains the same logit
SIZE = 224
BATCH_SIZES = {"default": (1, 8, 16, 32, 64), "vgg16": (1, 8, 16, 32)}
MIN_IMAGES_PER_SAMPLE = 32  # small batches are repeated within a timed call, to even out the noise
CAPTUM_PER_EVAL = {"default": (8, 16, 32), "vgg16": (8, 16)}
# Captum takes minutes per call on 729 windows (and on vgg16 even on 169): it
# is timed on a subset of the windows, the same window at stride = window (Captum
# refuses a stride above the window; 224 - window is a multiple of it, so no edge
# window is missing), and its time scaled to the full count. --captum-full
# times it on the full grid instead.
SUBSET_STRIDE = {("*", 16): 16, ("vgg16", 32): 32}


def subset_stride(label: str, window: int, full: bool) -> int | None:
    if full:
        return None
    return SUBSET_STRIDE.get((label, window), SUBSET_STRIDE.get(("*", window)))


def load_seeded(spec: str):
    """The model with the same weights in every process: a timm model without
    weights starts from a random initialization, and the comparison with
    Captum (run in another process) needs the same one."""
    import cnnviz_core
    import torch

    torch.manual_seed(0)
    return cnnviz_core.load_model(spec)


def window_count(window: int, stride: int, size: int = SIZE) -> int:
    """Windows per image: positions every ``stride``, plus one flush with the
    edge when the stride does not land there."""
    per_axis = math.ceil((size - window) / stride) + 1
    return per_axis * per_axis


def calls_per_sample(batch_size: int) -> int:
    return max(1, MIN_IMAGES_PER_SAMPLE // batch_size)


# -- the limit: forward passes at the best batched throughput ---------------
def case_torch_forward(spec: str, batch_size: int) -> Workload:
    import torch

    adapter = load_seeded(spec)
    inputs = torch.from_numpy(np.repeat(prepared_batch(adapter, 1, IMAGE), batch_size, axis=0))
    inputs = inputs.contiguous(memory_format=torch.channels_last)  # the faster layout on CPUs
    model = adapter.module.eval()

    def run():
        with torch.inference_mode():
            for _ in range(calls_per_sample(batch_size)):
                model(inputs)

    return Workload(run)


def case_onnx_forward(spec: str, path: str, batch_size: int) -> Workload:
    import onnxruntime

    image = prepared_batch(load_seeded(spec), 1, IMAGE)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])  # runtime defaults
    feed = {session.get_inputs()[0].name: np.repeat(image, batch_size, axis=0)}

    def run():
        for _ in range(calls_per_sample(batch_size)):
            session.run(None, feed)

    return Workload(run)


# -- the tools ---------------------------------------------------------------
def case_cnnviz(spec: str, window: int, stride: int, cold: bool = False) -> Workload:
    """``cnnviz_core.run("occlusion", ...)`` with its defaults (runtime and
    incremental inference on auto). ``cold``: every call starts as a fresh
    process would, with a warm disk cache: the runtime decision only as kept
    on disk, no onnxruntime session, no traced model, no weight fingerprint."""
    import cnnviz_core

    adapter = load_seeded(spec)
    image = prepared_batch(adapter, 1, IMAGE)

    def forget():
        from cnnviz_adapters import onnx_runtime_cache
        from cnnviz_adapters.torch_model import digest as torch_digest
        from cnnviz_plugins.attribution.occlusion import backends as occlusion_backends, runtime as occlusion_runtime

        occlusion_backends.forget_decisions()
        onnx_runtime_cache.clear_sessions()
        torch_digest._fingerprints.clear()
        occlusion_runtime._engines.clear()

    def run():
        if cold:
            forget()
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run("occlusion", adapter, image, target=TARGET, scheduler=scheduler, window=window, stride=stride)

    def check_data(result):
        runtime = result.metadata["runtime"]
        return (result.maps[0], runtime.get("backend"), runtime.get("how"), runtime.get("probe_ms_per_window", {}),
                runtime.get("batch_size"))

    return Workload(run, check_data)


def case_captum(spec: str, window: int, stride: int, per_eval: int) -> Workload:
    import torch
    from captum.attr import Occlusion

    adapter = load_seeded(spec)
    inputs = torch.from_numpy(prepared_batch(adapter, 1, IMAGE))
    occlusion = Occlusion(adapter.module.eval())

    def run():
        with torch.no_grad():
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
def find_fastest_forward(label: str, spec: str, onnx_path: str, repeats: int) -> Config:
    """Per-image forward time of eager torch (channels-last) and onnxruntime
    at each batch size; the fastest configuration is the limit's."""
    rows, best = [], None
    for batch_size in BATCH_SIZES.get(label, BATCH_SIZES["default"]):
        images = batch_size * calls_per_sample(batch_size)
        configs = [
            Config(f"torch channels_last, batch {batch_size}", case_torch_forward, images, {"spec": spec, "batch_size": batch_size}),
            Config(f"onnxruntime, batch {batch_size}", case_onnx_forward, images,
                   {"spec": spec, "path": onnx_path, "batch_size": batch_size}),
        ]
        measured = measure(configs, repeats)
        for config in configs:
            m = measured[config.label]
            rows.append([config.label, m.per_item_ms, m.best_ms, m.spread, m.cores_used, m.peak_mib, m.extra_mib])
            if best is None or m.per_item_ms < best[1].per_item_ms:
                best = (config, m)
    print_table(["forward", "ms/image", "best", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"], rows,
                title=f"{label}: forward passes (at least {MIN_IMAGES_PER_SAMPLE} images per timed call, median of {repeats})")
    print(f"fastest: {best[0].label}, {best[1].per_item_ms:.2f} ms/image; measured again beside each occlusion run")
    return best[0]


@dataclasses.dataclass
class Summary:
    model: str
    setting: str
    windows: int
    limit_ms: float
    cnnviz_ms: float
    cnnviz_cold_ms: float
    backend: str
    captum_ms: float
    captum_note: str


def measure_occlusion(label: str, spec: str, window: int, stride: int, fastest: Config, repeats: int,
                      captum_full: bool) -> Summary:
    windows = window_count(window, stride)
    subset = subset_stride(label, window, captum_full)
    captum_stride = subset or stride
    captum_windows = window_count(window, captum_stride)
    scale = windows / captum_windows  # Captum's time x scale = its time on the full grid
    limit_label = f"limit: {windows} x {fastest.label}"
    warm, cold = "cnnviz occlusion (auto)", "cnnviz occlusion (auto), cold: fresh decisions and sessions"
    captum_labels = {}
    configs = [
        # the limit's forward, in the same rounds as the tools so that they meet the same load
        dataclasses.replace(fastest, label=limit_label),
        Config(warm, case_cnnviz, 1, {"spec": spec, "window": window, "stride": stride}),
        Config(cold, case_cnnviz, 1, {"spec": spec, "window": window, "stride": stride, "cold": True}),
    ]
    for per_eval in CAPTUM_PER_EVAL.get(label, CAPTUM_PER_EVAL["default"]):
        text = f"captum Occlusion, {per_eval} per eval"
        if subset:
            text += f" (timed: {captum_windows} windows at stride {captum_stride}, x{scale:.1f})"
        captum_labels[text] = per_eval
        configs.append(Config(text, case_captum, 1, {"spec": spec, "window": window, "stride": captum_stride, "per_eval": per_eval}))
    results = measure(configs, repeats)

    def full_ms(name: str, best: bool = False) -> float:
        m = results[name]
        value = m.best_ms if best else m.per_item_ms
        return value * windows if name == limit_label else value * scale if name in captum_labels else value

    limit_ms = full_ms(limit_label)
    captum_best = min(captum_labels, key=full_ms)
    rows = []
    for name, m in results.items():
        total = full_ms(name)
        rows.append([name, total, full_ms(name, best=True), total / limit_ms,
                     full_ms(captum_best) / total if name.startswith("cnnviz") else None,
                     m.spread, m.cores_used, m.peak_mib, m.extra_mib])
    print_table(
        ["configuration", "ms (full grid)", "best", "x limit", "captum/this", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows, title=f"{label}, window {window} stride {stride}: {windows} windows; median of {repeats}",
    )
    cnnviz_map, backend, how, probe, batch = results[warm].check
    print(f"cnnviz ran on: {backend}, {batch} windows per batch ({how}; probe ms/window: "
          f"{', '.join(f'{k} {v:.2f}' for k, v in probe.items()) or 'none'})")
    if not subset:
        captum_map = results[captum_best].check
        print(f"agreement: max |cnnviz - {captum_best}| / max |map| = "
              f"{max_relative_difference(captum_map[None], cnnviz_map[None]):.2g} (same windows: float noise means equal)")
    else:
        print("agreement with Captum not checked: Captum ran on a subset of the windows")
    note = f"{captum_windows} windows x{scale:.1f}" if subset else "full grid"
    return Summary(label, f"{window}/{stride}", windows, limit_ms, full_ms(warm), full_ms(cold), backend,
                   full_ms(captum_best), note)


def print_summary(summaries: list[Summary]) -> None:
    rows = [[s.model, s.setting, s.windows, s.limit_ms, s.cnnviz_ms, s.cnnviz_ms / s.limit_ms, s.cnnviz_cold_ms / s.limit_ms,
             s.backend, s.captum_ms, s.captum_note, s.captum_ms / s.cnnviz_ms] for s in summaries]
    print_table(["model", "window/stride", "windows", "limit ms", "cnnviz ms", "x limit", "cold x limit", "cnnviz ran on",
                 "best captum ms", "captum timed on", "speed-up vs captum"], rows, title="Summary (DESIGN 6: x limit <= 1.2; goal: >= 2x faster than Captum)")
    for s in summaries:
        ratio, speedup = s.cnnviz_ms / s.limit_ms, s.captum_ms / s.cnnviz_ms
        print(f"{s.model} {s.setting}: {ratio:.2f} x limit ({'meets' if ratio <= 1.2 else 'MISSES'} 1.2), "
              f"{speedup:.1f}x faster than Captum ({'meets' if speedup >= 2 else 'MISSES'} 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration after the cold one (default 2)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to run (default: all)")
    parser.add_argument("--settings", nargs="+", default=[f"{w}/{s}" for w, s in SETTINGS],
                        help="window/stride pairs (default: 16/8 32/16)")
    parser.add_argument("--captum-full", action="store_true", help="time Captum on every window, not on a subset (slow)")
    args = parser.parse_args()
    require("captum.attr", "captum")
    settings = [tuple(int(v) for v in text.split("/")) for text in args.settings]
    print_environment(f"bench_occlusion: {', '.join(args.models)} at {SIZE} px, one image ({IMAGE[0]}), class {TARGET}")

    from cnnviz_adapters.onnx_export import export_onnx

    summaries = []
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CNNVIZ_CACHE"] = os.path.join(folder, "cache")  # cnnviz's ONNX cache, inherited by the children
        for label in args.models:
            spec = MODELS[label]
            onnx_path = export_onnx(load_seeded(spec), os.path.join(folder, f"{label}.onnx"))
            fastest = find_fastest_forward(label, spec, onnx_path, args.repeats)
            for window, stride in settings:
                summaries.append(measure_occlusion(label, spec, window, stride, fastest, args.repeats, args.captum_full))
    print_summary(summaries)
    warn_if_busy()


if __name__ == "__main__":
    main()
