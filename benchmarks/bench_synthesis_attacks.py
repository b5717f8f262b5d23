"""adversarial (PGD) and fooling_images against the least work they need, on
the pretrained EfficientNet-Lite0 at 224 px, each configuration in its own
fresh process (CPU):

- PGD: steps per second against the limit, one forward + backward to the
  pixels at the same batch (the work of one step). A run of S steps also does
  a clean forward, the last iterate's forward and the 8-bit re-check, so its
  ideal time is S (forward + backward) + 3 forwards; "x ideal" compares with that.
- fooling_images: generations per second against the limit, one forward of the
  whole population (items x lambda images) at the same batch. A run of G
  generations also evaluates the random first population and the best images,
  so its ideal is (G + 1) population forwards + one forward of the items.
  Torch and ONNX (onnxruntime, the export of the same model).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from common import Config, Workload, measure, print_environment, print_table, sample_images, warn_if_busy

MODEL = "efficientnet_lite0"
OSTRICH = 9
PGD_STEPS = 10
GENERATIONS = 5
POPULATION = 16


def _adapter(runtime: str = "torch", onnx_path: str | None = None):
    import cnnviz_core

    return cnnviz_core.load_model(onnx_path if runtime == "onnx" else MODEL)


def _export_onnx() -> str:
    """One export shared by the ONNX configurations."""
    import cnnviz_core
    from cnnviz_adapters.onnx_export import export_onnx

    path = os.path.join(tempfile.mkdtemp(prefix="bench-attacks-"), "lite0.onnx")
    return export_onnx(cnnviz_core.load_model(MODEL), path)


def _pixels(adapter, batch: int) -> np.ndarray:
    from cnnviz_core.synthesis_inputs import starting_pixels

    return starting_pixels(sample_images(batch), adapter, "bench")[0]


def case_forward_backward(batch: int) -> Workload:
    """One PGD step's work: forward, cross-entropy, gradient to the pixels."""
    import torch
    import torch.nn.functional as F

    adapter = _adapter("torch")
    module = adapter.module
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    pixels = torch.from_numpy(_pixels(adapter, batch))
    labels = torch.full((batch,), OSTRICH)

    def run():
        x = pixels.clone().requires_grad_(True)
        logits = module(((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))
        torch.autograd.grad(F.cross_entropy(logits, labels), x)

    return Workload(run)


def case_forward(batch: int) -> Workload:
    adapter = _adapter("torch")
    inputs = (_pixels(adapter, batch) - 0.5) / 0.5

    def run():
        return adapter.logits(inputs)

    return Workload(run)


def case_pgd(batch: int) -> Workload:
    import cnnviz_core

    adapter = _adapter("torch")
    pixels = _pixels(adapter, batch)

    def run():
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        return cnnviz_core.run("adversarial", adapter, pixels, target=OSTRICH, scheduler=scheduler, attack="pgd",
                               steps=PGD_STEPS, early_stop=False, batch_size=batch)

    def summary(result) -> str:
        records = result.records
        return (f"{sum(r['success'] for r in records)}/{len(records)} reached, max Linf {max(r['linf'] for r in records):.4f}, "
                f"min p {min(r['confidence_after'] for r in records):.2f}")

    return Workload(run, summary)


def case_population_forward(runtime: str, items: int, onnx_path: str) -> Workload:
    adapter = _adapter(runtime, onnx_path)
    population = np.random.default_rng(0).random((items * POPULATION, 3, 224, 224), dtype=np.float32)
    inputs = (population - 0.5) / 0.5

    def run():
        return adapter.logits(inputs)

    return Workload(run)


def case_fooling(runtime: str, items: int, onnx_path: str) -> Workload:
    import cnnviz_core

    adapter = _adapter(runtime, onnx_path)
    targets = [723, 490, 885, 782][:items]

    def run():
        scheduler = cnnviz_core.Scheduler(device="cpu", progress=False)
        # confidence 1.0: no item stops early, so every run does the same work
        return cnnviz_core.run("fooling_images", adapter, target=targets, scheduler=scheduler, encoding="smooth",
                               generations=GENERATIONS, population=POPULATION, parents=4, confidence=1.0, batch_size=items)

    return Workload(run, lambda result: [round(r["confidence"], 3) for r in result.records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (default 3)")
    args = parser.parse_args()
    print_environment(f"bench_synthesis_attacks: {MODEL} at 224 px, PGD {PGD_STEPS} steps, "
                      f"fooling images {GENERATIONS} generations of {POPULATION} per item")

    pgd_configs = []
    for batch in (1, 4):
        pgd_configs += [Config(f"forward+backward b{batch}", case_forward_backward, 1, {"batch": batch}),
                        Config(f"forward b{batch}", case_forward, 1, {"batch": batch}),
                        Config(f"pgd b{batch}", case_pgd, 1, {"batch": batch})]
    onnx_path = _export_onnx()
    # one group per runtime, so that fewer model-holding processes live at once
    results = measure(pgd_configs, args.repeats)
    for runtime in ("torch", "onnx"):
        fooling_configs = []
        for items in (1, 2):
            settings = {"runtime": runtime, "items": items, "onnx_path": onnx_path}
            fooling_configs += [
                Config(f"{runtime} forward {items}x{POPULATION}", case_population_forward, 1, settings),
                Config(f"{runtime} fooling {items} item(s)", case_fooling, 1, settings),
            ]
        results.update(measure(fooling_configs, args.repeats))

    rows = []
    for batch in (1, 4):
        limit, pgd = results[f"forward+backward b{batch}"], results[f"pgd b{batch}"]
        ideal = PGD_STEPS * limit.median_s + 3 * results[f"forward b{batch}"].median_s
        rows.append([f"pgd batch {batch}", PGD_STEPS / pgd.median_s, 1 / limit.median_s, pgd.median_s / (PGD_STEPS * limit.median_s),
                     pgd.median_s / ideal, pgd.spread, pgd.peak_mib, str(pgd.check)])
    print_table(["configuration", "steps/s", "limit steps/s", "x limit", "x ideal", "worst/best", "peak RSS MiB", "ostrich after 10 steps"],
                rows, title="PGD: steps per second vs one forward + backward at the same batch (medians of the timed calls)")

    rows = []
    for runtime in ("torch", "onnx"):
        for items in (1, 2):
            limit = results[f"{runtime} forward {items}x{POPULATION}"]
            run = results[f"{runtime} fooling {items} item(s)"]
            ideal = (GENERATIONS + 1) * limit.median_s + limit.median_s / POPULATION
            rows.append([f"{runtime}, {items} item(s)", GENERATIONS / run.median_s, 1 / limit.median_s,
                         run.median_s / (GENERATIONS * limit.median_s), run.median_s / ideal, run.spread, run.peak_mib, str(run.check)])
    print_table(["configuration", "generations/s", "limit gen/s", "x limit", "x ideal", "worst/best", "peak RSS MiB", "confidence reached"], rows,
                title=f"fooling_images (smooth): generations per second vs one forward of the population ({POPULATION} per item)")
    warn_if_busy()


if __name__ == "__main__":
    main()
