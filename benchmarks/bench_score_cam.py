"""Score-CAM of one image: cnnviz (torch and ONNX adapters) against the forward
passes it cannot avoid (one per channel of the layer that is not constant on
the image: a constant channel masks the whole image, and its score is the
baseline's), and against
pytorch-grad-cam's ScoreCAM on the same model, layer and class. Each
configuration runs in its own fresh process (CPU).

Score-CAM costs one forward per channel: at the default layer of
efficientnet_lite0 (bn2, 1280 channels) one call takes tens of seconds on two
cores, so the default is 2 timed calls; `--layer blocks.5` (192 channels) is
a quick run. The forward passes are measured first, two processes at a time,
and the tools after: each process holds a model and its buffers (pytorch-grad-cam
builds all masked copies of the image at once, about 1 GB at bn2), and too many
at once run the machine out of memory."""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from common import (
    Config,
    Workload,
    correlation,
    max_relative_difference,
    measure,
    min_max_normalized,
    prepared_batch,
    print_environment,
    print_table,
    require,
    warn_if_busy,
)

MODEL = "efficientnet_lite0"
IMAGE = ("chelsea",)
TARGET = 285  # "Egyptian cat": one fixed class, so that every tool explains the same score
# torch module → the ONNX node that outputs the same tensor (batch norms are
# folded into the convolutions on export; bn2's activation is the Clip)
ONNX_NODES = {"bn2": "/bn2/act/Clip", "blocks.5": "/blocks/blocks.5/blocks.5.3/Add", "blocks.6": "/blocks/blocks.6/blocks.6.0/conv_pwl/Conv"}
FORWARD_BATCHES = (16, 64)
IMAGES_PER_FORWARD_SAMPLE = 64  # a forward configuration's timed call pushes this many images
GRAD_CAM_BATCH = 16  # pytorch-grad-cam's default masked batch (64 measured no faster)


# -- the limit: one forward per channel at the best batched throughput -------
def case_torch_forward(batch_size: int) -> Workload:
    import cnnviz_core
    import torch

    adapter = cnnviz_core.load_model(MODEL)
    inputs = adapter.tensor(np.repeat(prepared_batch(adapter, 1, IMAGE), batch_size, axis=0))  # channels-last, as the adapter feeds

    def run():
        with torch.inference_mode():
            for _ in range(IMAGES_PER_FORWARD_SAMPLE // batch_size):
                adapter.module(inputs)

    return Workload(run)


def case_onnx_forward(batch_size: int, path: str) -> Workload:
    import cnnviz_core
    import onnxruntime

    image = prepared_batch(cnnviz_core.load_model(path), 1, IMAGE)  # the adapter only preprocesses
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])  # runtime defaults
    feed = {session.get_inputs()[0].name: np.repeat(image, batch_size, axis=0)}

    def run():
        for _ in range(IMAGES_PER_FORWARD_SAMPLE // batch_size):
            session.run(None, feed)

    return Workload(run)


# -- the tools ---------------------------------------------------------------
def case_cnnviz(spec: str, layer: str) -> Workload:
    import cnnviz_core

    adapter = cnnviz_core.load_model(spec)
    image = prepared_batch(adapter, 1, IMAGE)

    def run():
        # as a user calls it; the scheduler only to keep the CPU and mute the progress bar
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run("score_cam", adapter, image, target=TARGET, layer=layer, scheduler=scheduler)

    def check_data(result):
        gains = result.extras["channel_gains"][0]
        return {
            "weights": result.extras["channel_weights"], "layer": result.extras["layer_map"], "image": result.maps,
            "channels": gains.size, "forwards": int((gains != 0).sum()),
        }

    return Workload(run, check_data)


def case_pytorch_grad_cam(layer: str, batch_size: int) -> Workload:
    import cnnviz_core
    import torch
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class RecordingScoreCAM(ScoreCAM):
        """Its ScoreCAM, keeping the channel weights it computes for the agreement check."""

        def get_cam_weights(self, *args, **kwargs):
            self.recorded_weights = super().get_cam_weights(*args, **kwargs)
            return self.recorded_weights

    adapter = cnnviz_core.load_model(MODEL)
    inputs = torch.from_numpy(prepared_batch(adapter, 1, IMAGE))  # as its users pass it: channels-first
    cam = RecordingScoreCAM(model=adapter.module, target_layers=[adapter.get_layer(layer)])
    cam.batch_size = batch_size
    targets = [ClassifierOutputTarget(TARGET)]  # the logit, the score cnnviz explains by default

    def run():
        return cam(input_tensor=inputs, targets=targets)  # min-max normalized, resized maps

    def check_data(maps):
        weights = cam.recorded_weights
        activations = cam.activations_and_grads.activations[0].numpy()
        layer_map = np.maximum(np.einsum("bk,bkhw->bhw", weights, activations), 0)
        return {"weights": weights, "layer": layer_map, "image": maps}

    return Workload(run, check_data)


# -- report ------------------------------------------------------------------
def find_fastest_forward(onnx_path: str, repeats: int) -> Config:
    """Per-image forward time of eager torch (channels-last) and onnxruntime
    at each batch size; prints them and returns the fastest configuration."""
    rows, best = [], None
    for batch_size in FORWARD_BATCHES:
        configs = [
            Config(f"torch channels_last, batch {batch_size}", case_torch_forward, IMAGES_PER_FORWARD_SAMPLE, {"batch_size": batch_size}),
            Config(f"onnxruntime, batch {batch_size}", case_onnx_forward, IMAGES_PER_FORWARD_SAMPLE, {"batch_size": batch_size, "path": onnx_path}),
        ]
        measured = measure(configs, repeats)
        for config in configs:
            m = measured[config.label]
            rows.append([config.label, m.per_item_ms, m.best_ms, m.spread, m.cores_used, m.peak_mib, m.extra_mib])
            if best is None or m.per_item_ms < best[1].per_item_ms:
                best = (config, m)
    print_table(
        ["forward", "ms/image", "best", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows,
        title=f"Forward passes ({IMAGES_PER_FORWARD_SAMPLE} images per timed call, median of {repeats})",
    )
    print(f"fastest: {best[0].label}, {best[1].per_item_ms:.2f} ms/image; measured again beside the tools")
    return best[0]


def print_timings(results: dict, channels: int, limit_label: str, tools: list[str], peer: str) -> float:
    limit_ms = channels * results[limit_label].per_item_ms
    rows = [[f"limit: {channels} x {limit_label}", limit_ms, channels * results[limit_label].best_ms, 1.0, None,
             results[limit_label].spread, results[limit_label].cores_used, results[limit_label].peak_mib, results[limit_label].extra_mib]]
    for label in tools + [peer]:
        m = results[label]
        rows.append([
            label, m.per_item_ms, m.best_ms, m.per_item_ms / limit_ms,
            m.per_item_ms / results[peer].per_item_ms if label in tools else None,
            m.spread, m.cores_used, m.peak_mib, m.extra_mib,
        ])
    print_table(
        ["configuration", "ms/image", "best", "x limit", "x pytorch-grad-cam", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows,
        title=f"Score-CAM of one image, {channels} masked forwards: median of {len(results[peer].times_s)}",
    )
    return limit_ms


def print_agreement(results: dict, pairs: list[tuple[str, str]]) -> None:
    rows = []
    for first, second in pairs:
        a, b = results[first].check, results[second].check
        rows.append([
            f"{first} vs {second}",
            float(np.abs(a["weights"] - b["weights"]).max() / np.abs(a["weights"]).max()),
            correlation(a["weights"], b["weights"]),
            max_relative_difference(a["layer"], b["layer"]),
            correlation(a["layer"], b["layer"]),
            float(np.abs(min_max_normalized(a["image"]) - min_max_normalized(b["image"])).max()),
        ])
    print_table(
        ["pair", "weights max rel diff", "weights corr", "layer map max rel diff", "layer map corr", "image map max |diff| (0-1 scaled)"],
        rows,
        title="Agreement (weights = softmax over channels; layer map = ReLU(sum_k a_k A_k) before upsampling, raw scale)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration (default 2)")
    parser.add_argument("--layer", default="bn2", choices=sorted(ONNX_NODES), help="torch layer (default bn2, the default layer)")
    args = parser.parse_args()
    require("pytorch_grad_cam", "grad-cam")
    print_environment(f"bench_score_cam: {MODEL} at 224 px, one image ({IMAGE[0]}), class {TARGET}, layer {args.layer}")

    import cnnviz_core
    from cnnviz_adapters.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(cnnviz_core.load_model(MODEL), os.path.join(folder, "lite0.onnx"))
        fastest = find_fastest_forward(onnx_path, args.repeats)
        tools = ["cnnviz score_cam, torch adapter", "cnnviz score_cam, ONNX adapter"]
        peer = f"pytorch-grad-cam ScoreCAM, batch {GRAD_CAM_BATCH}"
        configs = [
            fastest,  # the limit's forward, in the same rounds as the tools so that they meet the same load
            Config(tools[0], case_cnnviz, 1, {"spec": MODEL, "layer": args.layer}),
            Config(tools[1], case_cnnviz, 1, {"spec": onnx_path, "layer": ONNX_NODES[args.layer]}),
            Config(peer, case_pytorch_grad_cam, 1, {"layer": args.layer, "batch_size": GRAD_CAM_BATCH}),
        ]
        results = measure(configs, args.repeats)

    check = results[tools[0]].check
    print(f"\n{check['forwards']} of {check['channels']} channels are not constant on this image: cnnviz runs one "
          "masked forward for each of those only (pytorch-grad-cam runs one for every channel)")
    limit_ms = print_timings(results, check["forwards"], fastest.label, tools, peer)
    print_agreement(results, [(tools[0], tools[1]), (tools[0], peer)])
    print("(both take the softmax over channels of the target logit on the masked copies; pytorch-grad-cam upsamples "
          "the masks with align_corners=True, cnnviz with align_corners=False as the authors' code does, and the "
          "weights differ by that alone: with align_corners=True masks cnnviz's weights matched pytorch-grad-cam's to "
          "3e-6 of the largest weight at blocks.4)")
    for label in tools:
        print(f"{label}: {results[label].per_item_ms / limit_ms:.2f} x limit, "
              f"{results[label].per_item_ms / results[peer].per_item_ms:.2f} x pytorch-grad-cam")
    warn_if_busy()


if __name__ == "__main__":
    main()
