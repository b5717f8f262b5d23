"""Do the speed verdicts hold on a busy machine? (issue 15) The Grad-CAM and
occlusion comparisons, each run --runs times idle and --runs times while a
controlled background load runs (--load processes, each spinning on one core),
every run in fresh processes; the ratios are reported as median and spread.

- Grad-CAM (lite0, batch 16): cnnviz / the faster of Captum's LayerGradCam
  (contiguous or channels-last input). Goal: <= 1.0.
- Occlusion (lite0, chelsea, window 16 stride 8: 729 windows): cnnviz /
  the forward limit (729 x the faster per-image forward of eager torch
  channels-last and onnxruntime at batch 16). Goal: <= 1.2.

Captum's Grad-CAM is a peer only (`pip install -r benchmarks/requirements.txt`)."""

from __future__ import annotations

import argparse
import os
import tempfile

from common import BackgroundLoad, Config, measure, print_environment, print_table, require, spread_text, verdict

import bench_gradcam
import bench_occlusion

GRADCAM_GOAL, OCCLUSION_GOAL = 1.0, 1.2
SPEC = "efficientnet_lite0"


def gradcam_ratio(repeats: int) -> float:
    configs = [Config("cnnviz", bench_gradcam.case_cnnviz, bench_gradcam.BATCH),
               Config("captum", bench_gradcam.case_captum, bench_gradcam.BATCH, {"channels_last": False}),
               Config("captum channels-last", bench_gradcam.case_captum, bench_gradcam.BATCH, {"channels_last": True})]
    results = measure(configs, repeats)
    return results["cnnviz"].per_item_ms / min(results["captum"].per_item_ms, results["captum channels-last"].per_item_ms)


def occlusion_ratio(onnx_path: str, window: int, stride: int, batch: int, repeats: int) -> float:
    images = batch * bench_occlusion.calls_per_sample(batch)
    configs = [Config("torch", bench_occlusion.case_torch_forward, images, {"spec": SPEC, "batch_size": batch}),
               Config("onnxruntime", bench_occlusion.case_onnx_forward, images,
                      {"spec": SPEC, "path": onnx_path, "batch_size": batch}),
               Config("cnnviz", bench_occlusion.case_cnnviz, 1, {"spec": SPEC, "window": window, "stride": stride})]
    results = measure(configs, repeats)
    limit_ms = bench_occlusion.window_count(window, stride) * min(results["torch"].per_item_ms, results["onnxruntime"].per_item_ms)
    return results["cnnviz"].per_item_ms / limit_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per comparison and condition (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration within a run (default 3)")
    parser.add_argument("--load", type=int, default=1, help="background processes spinning, one core each (default 1)")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--only", choices=("gradcam", "occlusion"), help="run one comparison only")
    args = parser.parse_args()
    if args.only != "occlusion":
        require("captum.attr", "captum")
    print_environment(f"busy: ratios idle and with {args.load} spinning process(es), {args.runs} runs each")

    from cnnviz_adapters.onnx_export import export_onnx

    ratios: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CNNVIZ_CACHE"] = os.path.join(folder, "cache")  # inherited by the measuring children
        onnx_path = export_onnx(bench_occlusion.load_seeded(SPEC), os.path.join(folder, "lite0.onnx"))
        for condition in ("idle", "busy"):
            for _ in range(args.runs):
                with BackgroundLoad(args.load if condition == "busy" else 0):
                    if args.only != "occlusion":
                        ratios.setdefault(("Grad-CAM / fastest Captum", condition), []).append(gradcam_ratio(args.repeats))
                    if args.only != "gradcam":
                        ratios.setdefault(("occlusion / forward limit", condition), []).append(
                            occlusion_ratio(onnx_path, args.window, args.stride, 16, args.repeats))
                # each run as it ends: a long benchmark stopped early still says what it measured
                print(f"{condition} run: " + ", ".join(f"{name} {values[-1]:.2f}" for (name, cond), values in ratios.items()
                                                        if cond == condition), flush=True)
    rows = [[name, condition, spread_text(values)] for (name, condition), values in ratios.items()]
    print_table(["ratio", "machine", "range (spread)"], rows, title="Ratios per run")
    print()
    for (name, condition), values in ratios.items():
        goal = GRADCAM_GOAL if name.startswith("Grad-CAM") else OCCLUSION_GOAL
        verdict(f"{name}, {condition}", values, goal)


if __name__ == "__main__":
    main()
