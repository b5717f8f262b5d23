"""Grad-CAM on a batch: cnnviz against the least work the method needs, and
against Captum's LayerGradCam and pytorch-grad-cam on the same model, layer,
batch and class. Each configuration runs in its own fresh process (CPU)."""

from __future__ import annotations

import argparse

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
BATCH = 16
TARGET = 285  # "Egyptian cat": one fixed class, so that every tool explains the same score


def _setup():
    """Model, layer and batch; finding the default layer runs one forward, so
    the runtime's lazy initialisation is done before anything is measured."""
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL)
    layer = adapter.default_layer()
    return adapter, layer, prepared_batch(adapter, BATCH)


def as_tensor(batch: np.ndarray, channels_last: bool):
    """The batch as a torch tensor; channels-last makes the convolutions pick
    their NHWC kernels (the torch adapter feeds this layout itself)."""
    import torch

    tensor = torch.from_numpy(batch)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


# -- the limit ---------------------------------------------------------------
def case_forward() -> Workload:
    import torch

    adapter, _, batch = _setup()
    inputs = as_tensor(batch, channels_last=True)  # the limit takes the faster layout

    def run():
        with torch.inference_mode():
            adapter.module(inputs)

    return Workload(run)


def case_forward_backward_to_layer() -> Workload:
    """The least work Grad-CAM needs: one forward, then the gradient of the
    target logits with respect to the layer's output, and nothing below it."""
    import torch

    adapter, layer, batch = _setup()
    model, inputs = adapter.module, as_tensor(batch, channels_last=True)
    for parameter in model.parameters():  # no weight gradients: no graph is kept before the layer
        parameter.requires_grad_(False)
    leaves = []

    def make_leaf(_module, _inputs, output):
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    adapter.get_layer(layer).register_forward_hook(make_leaf)

    def run():
        leaves.clear()
        logits = model(inputs)
        torch.autograd.grad(logits[:, TARGET].sum(), leaves[0])

    return Workload(run)


# -- the tools ---------------------------------------------------------------
def case_cnnviz() -> Workload:
    import cnnviz_core

    adapter, _, batch = _setup()

    def run():
        # as a user calls it; the scheduler only to keep the CPU and mute the progress bar
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run("gradcam", adapter, batch, target=TARGET, scheduler=scheduler)

    return Workload(run, lambda result: {"layer": result.extras["layer_map"], "image": result.maps})


def case_captum(channels_last: bool) -> Workload:
    from captum.attr import LayerAttribution, LayerGradCam

    adapter, layer, batch = _setup()
    inputs = as_tensor(batch, channels_last)
    explainer = LayerGradCam(adapter.module, adapter.get_layer(layer))

    def run():
        layer_map = explainer.attribute(inputs, target=TARGET, relu_attributions=True)
        return layer_map, LayerAttribution.interpolate(layer_map, tuple(batch.shape[-2:]), interpolate_mode="bilinear")

    def check_data(output):
        layer_map, image_map = output
        return {"layer": layer_map[:, 0].detach().numpy(), "image": image_map[:, 0].detach().numpy()}

    return Workload(run, check_data)


def case_pytorch_grad_cam() -> Workload:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    adapter, layer, batch = _setup()
    inputs, layer_module = as_tensor(batch, channels_last=False), adapter.get_layer(layer)
    cam = GradCAM(model=adapter.module, target_layers=[layer_module])
    targets = [ClassifierOutputTarget(TARGET)] * BATCH

    def run():
        return cam(input_tensor=inputs, targets=targets)  # min-max normalized, resized maps

    def check_data(maps):
        # its raw layer map, rebuilt by its own code from what it captured, before normalization
        captured = cam.activations_and_grads
        activations, gradients = captured.activations[0].numpy(), captured.gradients[0].numpy()
        raw = cam.get_cam_image(inputs, layer_module, targets, activations, gradients)
        return {"layer": np.maximum(raw, 0), "image": maps}

    return Workload(run, check_data)


# -- report ------------------------------------------------------------------
def print_timings(results: dict, limit_label: str, tools: list[str], peers: list[str]) -> None:
    limit = results[limit_label].per_item_ms
    fastest_peer = min(results[p].per_item_ms for p in peers)
    rows = []
    for label, m in results.items():
        rows.append([
            label,
            m.per_item_ms,
            m.best_ms,
            m.per_item_ms / limit,
            m.per_item_ms / fastest_peer if label in tools else None,
            m.spread, m.cores_used,
            m.peak_mib,
            m.extra_mib,
        ])
    print_table(
        ["configuration", "ms/image", "best", "x limit", "x fastest peer", "worst/best", "cores used", "peak RSS MiB", "+RSS MiB"],
        rows,
        title=f"Grad-CAM, batch {BATCH}, median of the timed calls; worst/best = their spread (limit = '{limit_label}')",
    )


def print_agreement(results: dict, tools: list[str]) -> None:
    rows = []
    for i, first in enumerate(tools):
        for second in tools[i + 1:]:
            a, b = results[first].check, results[second].check
            rows.append([
                f"{first} vs {second}",
                max_relative_difference(a["layer"], b["layer"]),
                correlation(a["layer"], b["layer"]),
                float(np.abs(min_max_normalized(a["image"]) - min_max_normalized(b["image"])).max()),
                correlation(a["image"], b["image"]),
            ])
    print_table(
        ["pair", "layer map max rel diff", "layer map corr", "image map max |diff| (0-1 scaled)", "image map corr"],
        rows,
        title="Agreement (worst image of the batch; layer map = ReLU(sum_k a_k A_k) before upsampling, raw scale)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (default 5)")
    args = parser.parse_args()
    require("captum.attr", "captum")
    require("pytorch_grad_cam", "grad-cam")
    print_environment(f"bench_gradcam: {MODEL}, batch {BATCH} at 224 px, class {TARGET}, layer = the default layer")

    limit = "limit: forward + backward to layer"
    tools = ["cnnviz gradcam", "captum LayerGradCam", "captum LayerGradCam, channels-last input", "pytorch-grad-cam"]
    configs = [
        Config("forward only (inference)", case_forward, BATCH),
        Config(limit, case_forward_backward_to_layer, BATCH),
        Config(tools[0], case_cnnviz, BATCH),
        Config(tools[1], case_captum, BATCH, {"channels_last": False}),
        Config(tools[2], case_captum, BATCH, {"channels_last": True}),
        Config(tools[3], case_pytorch_grad_cam, BATCH),
    ]
    results = measure(configs, args.repeats)
    print_timings(results, limit, tools, peers=tools[1:])
    print_agreement(results, tools)
    cnnviz, captum = results[tools[0]], [results[tools[1]], results[tools[2]]]
    best_ratio = cnnviz.best_s / min(m.best_s for m in captum)
    median_ratio = cnnviz.median_ms / min(m.median_ms for m in captum)
    verdict = "meets" if median_ratio <= 1.0 else "MISSES"
    print(
        f"\ncnnviz / best Captum LayerGradCam = {median_ratio:.2f} on medians ({verdict} DESIGN 6: not slower "
        f"than Captum), {best_ratio:.2f} on best times"
    )
    warn_if_busy()


if __name__ == "__main__":
    main()
