"""Deletion + insertion (issue 13) against the forward limit and against Quantus.

EfficientNet-Lite0 pretrained, Grad-CAM maps of scikit-image photographs
(as ranks, ties broken in reading order, so that every library orders the
pixels alike), ``--steps`` steps at ``--size`` px:

- limit: (steps + 1) forward passes per image and metric, at the best
  per-image time of the model's fastest forward runner over batch sizes 16,
  32, 64 (and 128, 256 on a GPU). Goal: cnnviz within 1.2x of it.
- Quantus (``pip install quantus`` in the benchmark environment; never a
  project dependency): ``PixelFlipping`` with features_in_step = 3·H·W/steps
  (its features are channel values: the map is broadcast over the channels),
  perturb_baseline 0.0 (on normalized inputs: cnnviz's ``mean`` baseline;
  Quantus's "black" is each image's minimum value, its "mean" the mean of the
  image as perturbed so far) and softmax is cnnviz's deletion curve without its first point
  (Quantus scores after each step, cnnviz from the clean image); the curves
  must agree within 1e-4. Quantus has no insertion metric, so only deletion
  is compared; the areas differ by definition (cnnviz: trapezoid over the
  fraction removed from 0 to 1). Goal: at least 10x faster.

Prints one table and the verdicts; ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry"]


def best_forward_seconds(adapter, size: int, device: str) -> tuple[float, str, int]:
    """Best per-image forward time over the adapter's runners and a few batch sizes."""
    import torch

    from cnnviz_core.metric_forward import ForwardScores

    batches = [16, 32, 64] + ([128, 256] if device.startswith("cuda") else [])
    best = (float("inf"), "", 0)
    for name, build in adapter.forward_runners().items():
        try:
            runner = build()
        except Exception as error:  # noqa: BLE001 - a runner that cannot be built is left out, and said so
            print(f"  runner {name} unavailable: {error}", file=sys.stderr)
            continue
        for batch in batches:
            x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
            scorer = ForwardScores(adapter, runtime="default", batch_size=batch)
            scorer.offered, scorer.runners, scorer.chosen = {name: lambda r=runner: r}, {name: runner}, name
            for _ in range(2):  # warm-up
                scorer.logits_of(batch, lambda lo, hi, d: x[lo:hi])
            times = []
            for _ in range(3):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                began = time.perf_counter()
                scorer.logits_of(batch, lambda lo, hi, d: x[lo:hi])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - began) / batch)
            if min(times) < best[0]:
                best = (min(times), name, batch)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=224)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()

    import torch

    import cnnviz_core
    from cnnviz_core import MetricBatch, get_registry

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = cnnviz_core.load_model("efficientnet_lite0", input_size=(args.size, args.size)).to(device)
    images = [f"skimage:{PHOTOS[i % len(PHOTOS)]}" for i in range(args.images)]
    inputs, names = adapter.prepare(images)
    names = [f"{n}{i}" for i, n in enumerate(names)]
    gradcam = cnnviz_core.run("gradcam", adapter, inputs, normalized=True, device=device)
    # Grad-CAM's order with ties broken in reading order, as distinct values: every library then sorts alike
    order = np.argsort(-gradcam.maps.reshape(len(inputs), -1), axis=1, kind="stable")
    maps = np.empty(order.shape, np.float32)
    np.put_along_axis(maps, order, np.arange(order.shape[1], 0, -1, dtype=np.float32)[None].repeat(len(inputs), 0), axis=1)
    maps = maps.reshape(gradcam.maps.shape)
    batch = MetricBatch(inputs, maps, gradcam.classes, names, "gradcam", explain=None)

    per_image, runner, runner_batch = best_forward_seconds(adapter, args.size, device)
    forwards = 2 * (args.steps + 1) * args.images
    limit = forwards * per_image
    results = {"device": device, "size": args.size, "steps": args.steps, "images": args.images,
               "forward_ms_per_image": per_image * 1e3, "limit_runner": runner, "limit_batch": runner_batch,
               "limit_s": limit}

    timings, curves = {}, {}
    with adapter.session():
        for name in ("deletion", "insertion"):
            cls = get_registry().method(name)
            metric = cls(adapter, cls.make_params(steps=args.steps))
            # warm-up large enough (2 forward batches) for the runner to be timed and chosen once, outside the timing
            copies = -(-2 * metric.forward.batch_size // (args.steps + 1))
            metric.evaluate(MetricBatch(np.repeat(inputs[:1], copies, 0), np.repeat(maps[:1], copies, 0),
                                        np.repeat(gradcam.classes[:1], copies), [f"warm{i}" for i in range(copies)], "warm-up", None))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            began = time.perf_counter()
            scores = metric.evaluate(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - began
            curves[name] = scores.curves[name]
            results[f"{name}_auc_mean"] = float(scores.scores.mean())
            results[f"{name}_runner"] = metric.metadata.get("forward", {}).get("runner")
    ours = timings["deletion"] + timings["insertion"]
    results.update(cnnviz_s=ours, ratio_to_limit=ours / limit)

    if not args.no_quantus:
        try:
            import quantus
        except ImportError:
            print("Quantus is not installed: python -m pip install quantus (benchmark environment only)", file=sys.stderr)
        else:
            # Quantus asks features_in_step to divide H·W, but counts features over the 3 channels (the map is
            # broadcast to the image): 3·H·W/steps divides H·W only when steps is a multiple of 3. Its evaluation
            # handles any step (the last one is shorter), so the check is lifted for steps that are not.
            from quantus.helpers import asserts

            asserts.assert_features_in_step = lambda **_: None
            metric = quantus.PixelFlipping(features_in_step=3 * args.size * args.size // args.steps, perturb_baseline=0.0,
                                           disable_warnings=True, display_progressbar=False)
            module = adapter.module
            began = time.perf_counter()
            theirs = np.asarray(metric(model=module, x_batch=inputs, y_batch=np.asarray(gradcam.classes),
                                       a_batch=maps[:, None], softmax=True, device=device, batch_size=args.images))
            results["quantus_deletion_s"] = time.perf_counter() - began
            difference = float(np.abs(theirs - curves["deletion"][:, 1:]).max())
            results.update(quantus_max_curve_difference=difference,
                           speedup_vs_quantus=results["quantus_deletion_s"] / timings["deletion"])
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        results["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

    print(f"lite0 at {args.size} px, {args.images} images, {args.steps} steps, {device}")
    print(f"  forward limit: {limit:.2f} s ({forwards} passes x {per_image * 1e3:.2f} ms, {runner}, batch {runner_batch})")
    print(f"  cnnviz deletion {timings['deletion']:.2f} s + insertion {timings['insertion']:.2f} s = {ours:.2f} s "
          f"-> {ours / limit:.2f}x the limit (goal <= 1.2x: {'met' if ours / limit <= 1.2 else 'NOT met'})")
    if "quantus_deletion_s" in results:
        print(f"  Quantus PixelFlipping (= deletion): {results['quantus_deletion_s']:.2f} s -> cnnviz "
              f"{results['speedup_vs_quantus']:.1f}x faster (goal >= 10x: {'met' if results['speedup_vs_quantus'] >= 10 else 'NOT met'}); "
              f"curves differ by at most {results['quantus_max_curve_difference']:.2e} "
              f"({'within' if results['quantus_max_curve_difference'] <= 1e-4 else 'NOT within'} 1e-4)")
    print(f"  peak RSS {results['peak_rss_mb']:.0f} MB" + (f", peak CUDA {results['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in results else ""))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)


if __name__ == "__main__":
    main()
