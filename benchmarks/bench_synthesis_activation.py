"""class_model and deepdream: optimization steps per second against the limit,
one forward plus one backward to the image at the same batch on the same
model (pretrained EfficientNet-Lite0, 224 px, CPU), each configuration in its
own fresh process.

A step of class_model (readable) adds to the limit the image parameterization
(inverse FFT, colour mixing, sigmoid), the random transform, the penalties and
Adam; a channel target stops the forward at its layer. DeepDream's steps run
at each octave's size and stop the forward at the default layer, so they can
be cheaper than the limit."""

from __future__ import annotations

import argparse
import os

from common import Config, Workload, measure, print_environment, print_table, sample_images, warn_if_busy

MODEL = "efficientnet_lite0"
STEPS = 12  # optimization steps per timed call; per-step times include each call's set-up, spread over these
CLASSES = (9, 130, 1, 22)  # ostrich, flamingo, goldfish, bald eagle


def _adapter():
    import cnnviz_core

    adapter = cnnviz_core.load_model(MODEL)
    adapter.default_layer()  # one forward: lazy initialisation is done before anything is timed
    return adapter


def case_limit(batch: int) -> Workload:
    """A forward and a backward of a class logit to the input, weights frozen;
    STEPS of them per call, so that the limit's calls last as long as the
    methods' and meet the same share of interruptions."""
    import torch

    adapter = _adapter()
    model = adapter.module
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    pixels = torch.rand((batch, 3, 224, 224), generator=torch.Generator().manual_seed(0))

    def run():
        for _ in range(STEPS):
            x = pixels.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            logits = model(x)
            torch.autograd.grad(logits[:, 9].sum(), x)

    return Workload(run)


def case_class_model(batch: int, mode: str = "readable", channel: bool = False) -> Workload:
    import cnnviz_core

    adapter = _adapter()
    targets = [f"blocks.4:{k}" for k in range(batch)] if channel else list(CLASSES[:batch])
    scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)

    def run():
        return cnnviz_core.run("class_model", adapter, target=targets, steps=STEPS, mode=mode, scheduler=scheduler)

    return Workload(run, lambda result: [(r["start"], r["end"]) for r in result.records])


def case_deepdream(batch: int, octaves: int) -> Workload:
    import cnnviz_core

    adapter = _adapter()
    photos, _ = adapter.prepare(sample_images(batch))
    from cnnviz_core.images import denormalize

    pixels = denormalize(photos, adapter.config)
    scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
    steps = max(1, STEPS // octaves)

    def run():
        return cnnviz_core.run("deepdream", adapter, pixels, steps=steps, octaves=octaves, scheduler=scheduler)

    return Workload(run, lambda result: [(r["start"], r["end"]) for r in result.records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (default 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--threads", type=int, help="torch threads in each measuring process (default: torch's own; "
                        "1 gives steadier ratios on a machine other work shares)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch as each spawned child imports it
    print_environment(f"bench_synthesis_activation: {MODEL} at 224 px, {STEPS} steps per call")

    results, steps_per_call = {}, {}
    for batch in args.batches:  # one batch size at a time: fewer processes alive at once
        configs = []

        def add(label, case, steps, **kwargs):
            configs.append(Config(f"{label}, batch {batch}", case, 1, {"batch": batch, **kwargs}))
            steps_per_call[configs[-1].label] = steps

        add("limit: forward + backward to the image", case_limit, STEPS)
        add("class_model readable, class", case_class_model, STEPS)
        add("class_model readable, channel blocks.4", case_class_model, STEPS, channel=True)
        add("class_model plain, class", case_class_model, STEPS, mode="plain")
        add("deepdream, 1 octave", case_deepdream, STEPS, octaves=1)
        add("deepdream, 4 octaves (default)", case_deepdream, (STEPS // 4) * 4, octaves=4)
        results.update(measure(configs, args.repeats))

    rows = []
    for batch in args.batches:
        limit = results[f"limit: forward + backward to the image, batch {batch}"]
        limit_step, limit_cpu = limit.median_s / STEPS, limit.median_cpu_s / STEPS
        for label, m in results.items():
            if not label.endswith(f"batch {batch}"):
                continue
            step = m.median_s / steps_per_call[label]
            cpu_step = m.median_cpu_s / steps_per_call[label]
            objective = m.check[0] if m.check else None
            rows.append([
                label, 1.0 / step, batch / step, step / limit_step, cpu_step / limit_cpu, m.spread, m.cores_used, m.peak_mib,
                None if objective is None else f"{objective[0]:.2f} -> {objective[1]:.2f}",
            ])
    # CPU time per step is the steadier ratio when other work shares the cores.
    print_table(
        ["configuration", "steps/s", "image-steps/s", "x limit (wall per step)", "x limit (CPU per step)", "worst/best",
         "cores used", "peak RSS MiB", f"objective start -> end (item 0, {STEPS} steps)"],
        rows,
        title="Steps per second (median of the timed calls; per-step time includes each call's set-up and final evaluation)",
    )
    warn_if_busy()


if __name__ == "__main__":
    main()
