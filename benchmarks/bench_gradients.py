"""Saliency and guided backprop on a batch: cnnviz against the least work they
need (one forward plus a backward to the image) and against Captum's Saliency
and GuidedBackprop on the same model, batch and class. Each configuration runs
in its own fresh process (CPU)."""

from __future__ import annotations

import argparse

from common import Config, Workload, correlation, measure, prepared_batch, print_environment, print_table, require, warn_if_busy

MODEL = "efficientnet_lite0"
BATCH = 16
TARGET = 285  # one fixed class, so every tool explains the same score


def _setup():
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL)
    adapter.default_layer()  # one forward: lazy runtime initialisation happens before timing
    return adapter, prepared_batch(adapter, BATCH)


def case_limit() -> Workload:
    """Forward, then the gradient of the target logits with respect to the input only."""
    import torch

    adapter, batch = _setup()
    model = adapter.module
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    inputs = adapter.tensor(batch)

    def run():
        x = inputs.detach().requires_grad_(True)
        torch.autograd.grad(model(x)[:, TARGET].sum(), x)

    return Workload(run)


def case_cnnviz(method: str) -> Workload:
    import cnnviz_core

    adapter, batch = _setup()

    def run():
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run(method, adapter, batch, target=TARGET, scheduler=scheduler, batch_size=BATCH)

    return Workload(run, lambda result: result.images)


def case_captum(method: str) -> Workload:
    import torch
    from captum.attr import GuidedBackprop, Saliency

    adapter, batch = _setup()
    inputs = torch.from_numpy(batch)
    explainer = (Saliency if method == "saliency" else GuidedBackprop)(adapter.module)

    def run():
        kwargs = {"abs": False} if method == "saliency" else {}
        return explainer.attribute(inputs, target=TARGET, **kwargs)

    return Workload(run, lambda output: output.detach().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (default 5)")
    args = parser.parse_args()
    require("captum.attr", "captum")
    print_environment(f"bench_gradients: {MODEL}, batch {BATCH} at 224 px, class {TARGET}")
    limit = "limit: forward + backward to input"
    configs = [Config(limit, case_limit, BATCH)]
    for method in ("saliency", "guided_backprop"):
        configs.append(Config(f"cnnviz {method}", case_cnnviz, BATCH, {"method": method}))
        configs.append(Config(f"captum {method}", case_captum, BATCH, {"method": method}))
    results = measure(configs, args.repeats)
    base = results[limit].per_item_ms
    rows = []
    for label, m in results.items():
        peer = label.replace("cnnviz", "captum")
        ratio = m.per_item_ms / results[peer].per_item_ms if label.startswith("cnnviz") else None
        rows.append([label, m.per_item_ms, m.per_item_ms / base, ratio, m.spread, m.peak_mib, m.extra_mib])
    print_table(["configuration", "ms/image", "x limit", "x captum", "worst/best", "peak RSS MiB", "+RSS MiB"], rows,
                title=f"batch {BATCH}, median of the timed calls")
    agreement = [[method, correlation(results[f"cnnviz {method}"].check, results[f"captum {method}"].check)]
                 for method in ("saliency", "guided_backprop")]
    print_table(["method", "gradient image corr (worst image)"], agreement,
                title="Agreement (Captum guides nn.ReLU only: on ReLU6 models its guided backprop is the plain gradient)")
    warn_if_busy()


if __name__ == "__main__":
    main()
