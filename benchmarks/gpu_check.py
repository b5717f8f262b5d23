"""cnnviz on an NVIDIA GPU: run this on a machine with one (it stops with a
message where there is none).

1. Grad-CAM and occlusion of EfficientNet-Lite0 (its built-in weights) at
   224 px over --images inputs each (default 5,000) on the GPU: images/s,
   the GPU memory peak (torch's allocator), and the batch the scheduler chose
   from the measured per-item memory (cnnviz_core.memory_budget). Inputs are
   the bundled photos, preprocessed once and cycled, so the figures are the
   model and method's, not JPEG decoding's; they run in parts of --part
   images (results dropped after each part) with one scheduler, as a dataset
   run's worker does.
2. The CPU fallback: the process's GPU memory is capped just above the model
   (torch.cuda.set_per_process_memory_fraction), so every batch, even of 1,
   runs out of memory for real; under --device auto the run must go on on the
   CPU with a warning, and its maps must equal a CPU run's.
3. onnxruntime's CUDA provider: occlusion of the ONNX export of the same model
   on the GPU over --onnx-images inputs (default 500), when onnxruntime-gpu is
   installed (else the line says what is missing).

    python benchmarks/gpu_check.py [--images 5000] [--onnx-images 500] [--quick]

--quick: 500 / 200 / 100 inputs, to check a machine in a few minutes."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

MODEL = "efficientnet_lite0"
OCCLUSION = {"window": 16, "stride": 8}


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'none'}; "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return None


def throughput(method: str, adapter, pool: np.ndarray, total: int, part: int, params: dict, device: str = "cuda:0") -> dict:
    """images/s, GPU peak and batches chosen of ``method`` over ``total`` inputs."""
    import torch

    import cnnviz_core

    gpu = device.startswith("cuda")
    scheduler = cnnviz_core.Scheduler(device, progress=False)
    warm = cnnviz_core.run(method, adapter, pool[:2], scheduler=scheduler, normalized=True, **params)  # compile, cuDNN choice
    del warm
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if gpu else 0
    started = time.perf_counter()
    done = 0
    while done < total:
        count = min(part, total - done)
        inputs = pool[(np.arange(count) + done) % len(pool)]
        result = cnnviz_core.run(method, adapter, inputs, scheduler=scheduler, normalized=True, **params)
        assert result.maps.shape[0] == count and np.isfinite(result.maps).all()
        done += count
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    measured = [(m.desc, m.batch, f"{m.per_item / 2**20:.1f} MiB/item") for m in scheduler.measurements]
    return {"method": method, "images": total, "seconds": seconds, "images_per_s": total / seconds,
            "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20 if gpu else float("nan"), "measured": measured,
            "backoffs": list(scheduler.backoffs)}


def fallback_check(adapter, pool: np.ndarray) -> str:
    """A real CUDA out-of-memory at a batch of 1 under auto: the run must go on
    on the CPU, with a warning, and equal a CPU run."""
    import torch

    import cnnviz_core
    from cnnviz_core.errors import MethodWarning

    inputs = pool[:4]
    adapter.to("cpu")
    expected = cnnviz_core.run("gradcam", adapter, inputs, device="cpu", normalized=True)
    adapter.to("cuda:0")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_allocated() + 4 * 2**20  # the weights and 4 MiB: no batch fits
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scheduler = cnnviz_core.Scheduler("auto", prefer="cuda:0", progress=False)
            result = cnnviz_core.run("gradcam", adapter, inputs, scheduler=scheduler, normalized=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    fell_back = [str(w.message) for w in caught if issubclass(w.category, MethodWarning) and "on the CPU" in str(w.message)]
    same = np.array_equal(result.maps, expected.maps)
    back = adapter.device
    ok = bool(fell_back) and same and scheduler.device_name == "cpu" and back == "cuda:0"
    return (f"{'OK' if ok else 'FAILED'}: warning {'given' if fell_back else 'MISSING'}; maps "
            f"{'equal' if same else 'DIFFER from'} a CPU run's; backoffs {scheduler.backoffs}; the model is back on {back}")


def onnx_check(adapter, pool: np.ndarray, count: int, part: int) -> str:
    from cnnviz_adapters.onnx_adapter import cuda_available
    from cnnviz_adapters.onnx_export import export_onnx

    import onnxruntime

    import cnnviz_core

    if not cuda_available():
        return (f"onnxruntime {onnxruntime.__version__} has no usable CUDA provider (providers: "
                f"{', '.join(onnxruntime.get_available_providers())}): pip install onnxruntime-gpu")
    adapter.to("cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(adapter, os.path.join(folder, "lite0.onnx"))
        onnx = cnnviz_core.load_model(path)
        onnx.to("cuda:0")
        figures = throughput("occlusion", onnx, pool, count, part, OCCLUSION)
    return (f"occlusion on onnxruntime CUDA: {figures['images_per_s']:.1f} images/s over {count} images "
            f"({figures['seconds']:.1f} s), batches {figures['measured'] or 'as hinted'} (torch's allocator does not see "
            f"onnxruntime's memory: 0 MiB/item keeps the method's batch), backoffs {figures['backoffs']}")


def plumbing() -> int:
    """The throughput loop on the CPU with a few inputs: catches a broken
    script before a GPU machine's time is spent on it."""
    import cnnviz_core
    from common import prepared_batch

    adapter = cnnviz_core.load_model(MODEL)
    pool = prepared_batch(adapter, 4)
    for method, params in (("gradcam", {}), ("occlusion", {"window": 56, "stride": 56})):
        figures = throughput(method, adapter, pool, 6, 4, params, device="cpu")
        print(f"{method} (CPU plumbing): {figures['images_per_s']:.2f} images/s over 6 inputs; backoffs {figures['backoffs']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="inputs per method on the GPU (default 5000)")
    parser.add_argument("--occlusion-images", type=int, help="inputs for occlusion (default: --images)")
    parser.add_argument("--onnx-images", type=int, default=500, help="inputs for occlusion on onnxruntime CUDA (default 500)")
    parser.add_argument("--part", type=int, default=500, help="inputs per run call (results dropped after each)")
    parser.add_argument("--quick", action="store_true", help="500 Grad-CAM, 200 occlusion, 100 ONNX inputs")
    parser.add_argument("--cpu-plumbing", action="store_true",
                        help="check this script's plumbing on the CPU with a few inputs (no GPU figures)")
    args = parser.parse_args()
    if args.cpu_plumbing:
        return plumbing()
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_check: no NVIDIA GPU here ({reason}). This script measures cnnviz on a GPU; run it on a machine "
              "with one (CPU benchmarks: make bench).", file=sys.stderr)
        return 2
    if args.quick:
        args.images, args.occlusion_images, args.onnx_images = 500, 200, 100
    import torch

    import cnnviz_core
    from common import prepared_batch

    print(f"GPU: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}; model {MODEL} at 224 px")
    adapter = cnnviz_core.load_model(MODEL)
    pool = prepared_batch(adapter, 64)
    adapter.to("cuda:0")
    for method, count, params in (("gradcam", args.images, {}), ("occlusion", args.occlusion_images or args.images, OCCLUSION)):
        figures = throughput(method, adapter, pool, count, args.part, params)
        print(f"{method}: {figures['images_per_s']:.1f} images/s over {count} images ({figures['seconds']:.1f} s); "
              f"GPU peak {figures['peak_mib']:.0f} MiB above the model; batch from measured memory "
              f"{figures['measured'] or 'none measured'}; backoffs {figures['backoffs']}", flush=True)
    print(f"CPU fallback at a real out-of-memory: {fallback_check(adapter, pool)}", flush=True)
    print(f"ONNX: {onnx_check(adapter, pool, args.onnx_images, args.part)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
