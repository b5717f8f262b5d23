"""inversion and style_transfer: optimization steps per second against the
limit, one forward plus one backward to the image at the same batch on the
same model (pretrained EfficientNet-Lite0, 224 px, CPU), each configuration
in its own fresh process.

Both methods read layers with a forward that stops after the deepest one, so
inverting the default layer (blocks.4) skips the last blocks and the head and
can beat the limit; style transfer's deepest default layer is blocks.6, near
the end. On top of the network a step adds the priors, the Gram matrices and
the optimizer (Adam, momentum SGD, or the per-item L-BFGS, whose line search
may evaluate a step more than once). Each call also pays its set-up: the
reference features of the inputs (and of the style image) and a final full
forward for the class of the result, spread over its steps."""

from __future__ import annotations

import argparse

from common import Config, Workload, measure, print_environment, print_table, sample_images, warn_if_busy

MODEL = "efficientnet_lite0"
STEPS = 10  # optimization steps per timed call
STYLE = "skimage:immunohistochemistry"


def _adapter():
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL)
    adapter.default_layer()  # one forward: lazy initialisation is done before anything is timed
    return adapter


def _photos(adapter, batch: int):
    from cnnviz_core.images import denormalize

    batch_inputs, _ = adapter.prepare(sample_images(batch))
    return denormalize(batch_inputs, adapter.config)


def case_limit(batch: int) -> Workload:
    """One forward and one backward of a class logit to the input, weights frozen."""
    import torch

    adapter = _adapter()
    model = adapter.module
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    pixels = torch.rand((batch, 3, 224, 224), generator=torch.Generator().manual_seed(0))

    def run():
        x = pixels.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        logits = model(x)
        torch.autograd.grad(logits[:, 9].sum(), x)

    return Workload(run)


def case_method(batch: int, method: str, **params) -> Workload:
    import cnnviz_core

    adapter = _adapter()
    pixels = _photos(adapter, batch)
    scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)

    def run():
        return cnnviz_core.run(method, adapter, pixels, steps=STEPS, batch_size=batch, scheduler=scheduler, **params)

    def summary(result):
        if method == "inversion":
            return ("feature distance", result.records[0]["feature_distance_start"], result.records[0]["feature_distance"])
        return ("style loss", result.records[0]["style_loss_start"], float(result.history["style_loss"][0, -1]))

    return Workload(run, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (default 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    args = parser.parse_args()
    print_environment(f"bench_synthesis_matching: {MODEL} at 224 px, {STEPS} steps per call")

    results, steps_per_call = {}, {}
    for batch in args.batches:  # one batch size at a time: fewer processes alive at once
        configs = []

        def add(label, case, steps, **kwargs):
            configs.append(Config(f"{label}, batch {batch}", case, 1, {"batch": batch, **kwargs}))
            steps_per_call[configs[-1].label] = steps

        add("limit: forward + backward to the image", case_limit, 1)
        add("inversion adam, blocks.4 (default)", case_method, STEPS, method="inversion")
        add("inversion sgd, blocks.4", case_method, STEPS, method="inversion", optimizer="sgd")
        add("inversion adam, bn2 (last feature map)", case_method, STEPS, method="inversion", layer="bn2")
        add("style_transfer lbfgs (default)", case_method, STEPS, method="style_transfer", style=STYLE)
        add("style_transfer adam", case_method, STEPS, method="style_transfer", style=STYLE, optimizer="adam")
        results.update(measure(configs, args.repeats))

    rows = []
    for batch in args.batches:
        limit_step = results[f"limit: forward + backward to the image, batch {batch}"].median_s
        for label, m in results.items():
            if not label.endswith(f"batch {batch}"):
                continue
            step = m.median_s / steps_per_call[label]
            progress = f"{m.check[0]} {m.check[1]:.3g} -> {m.check[2]:.3g}" if m.check else None
            rows.append([label, 1.0 / step, batch / step, step / limit_step, m.spread, m.cores_used, m.peak_mib, progress])
    print_table(
        ["configuration", "steps/s", "image-steps/s", "x limit (time per step)", "worst/best", "cores used", "peak RSS MiB",
         f"item 0 over {STEPS} steps"],
        rows,
        title="Steps per second (median of the timed calls; per-step time includes each call's set-up and final evaluation)",
    )
    warn_if_busy()


if __name__ == "__main__":
    main()
