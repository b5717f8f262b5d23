"""SmoothGrad (Smilkov et al. 2017) as a cnnviz plugin: a wrapper over any
registered gradient attribution method.

The inner method (``--of``, default saliency) runs on ``--samples`` noisy
copies x + N(0, σ²) of each image, σ = ``--noise`` × (max − min of the image
in the model's normalized space); its ``maps`` (and ``images``, where it has
them) are averaged over the copies. Every copy explains the class the clean
image's target resolves to (its top-1 by default), and ``scores`` are the
clean image's. Noise sample k comes from the seed sequence (seed, k): the
result depends only on the seed, not on chunking or on the other images.

Each image's copies go through the scheduler in chunks of ``--batch-size``,
so memory stays bounded and out-of-memory halves the chunk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import (
    Attribution, AttributionMethod, AttributionParams, Capability, InputError, Target, check_capabilities, get_registry,
    hookimpl, param, resolve_classes, select_scores, validate_targets,
)


@dataclasses.dataclass
class SmoothGradParams(AttributionParams):
    of: str = param("saliency", "the gradient attribution method whose maps are smoothed (saliency, guided_backprop, gradcam …)")
    # Smilkov et al. see the maps settle by about 50 samples; 25 keeps a CPU run
    # short with little visible difference.
    samples: int = param(25, "noisy copies averaged per image", minimum=1)
    noise: float = param(0.15, "noise σ as a fraction of each image's value range, max − min (Smilkov et al.: 0.1 to 0.2)", minimum=0.0)
    seed: int = param(0, "seed of the noise: the same seed gives the same result", minimum=0)
    batch_size: int | None = param(None, "noisy copies per forward/backward pass (default 16); halved on out-of-memory", minimum=1)


def gradient_methods(exclude: str = "") -> dict[str, type]:
    """The registered attribution methods that need gradients."""
    return {
        name: cls
        for name, cls in get_registry().methods.items()
        if cls.kind == "attribution" and Capability.GRADIENTS in cls.requires and name != exclude
    }


class SmoothGrad(AttributionMethod):
    """SmoothGrad: any gradient method's maps averaged over noisy copies of the input (--of saliency, guided_backprop, gradcam …)."""

    name = "smoothgrad"
    requires = frozenset({Capability.GRADIENTS})
    Params = SmoothGradParams
    batch_hint = 16  # noisy copies per chunk
    demo_params = {"samples": 8}

    @classmethod
    def check_params(cls, params) -> None:
        valid = gradient_methods(exclude=cls.name)
        if params.of not in valid:
            registered = get_registry().methods.get(params.of)
            why = (
                "it is not a registered method" if registered is None
                else f"it is a {registered.kind} method" if registered.kind != "attribution"
                else "it needs no gradients" if registered.name != cls.name
                else "it cannot wrap itself"
            )
            raise InputError(
                f"{cls.name}: --of must name a gradient attribution method ({', '.join(valid) or 'none registered'}); "
                f"got {params.of!r}: {why}"
            )

    def setup(self) -> None:
        inner_class = get_registry().method(self.params.of)
        check_capabilities(inner_class, self.adapter)  # its needs may exceed smoothgrad's own
        self.inner = inner_class(self.adapter, inner_class.make_params(score=self.params.score), self.scheduler)
        self.inner.setup()

    def check_targets(self, targets: list[Target]) -> None:
        # its noisy copies explain the class the clean image resolves to: classes, top-1 and neurons only
        validate_targets([t for t in targets if t.kind != "neuron"], {"class", "top1"}, self.name)
        self.inner.check_targets(targets)

    def batch_size(self) -> int:
        return 1  # images one at a time; the noisy copies of each are batched below

    def noise(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal noise of copy ``index``, from the seed sequence (seed, index)."""
        return np.random.default_rng([self.params.seed, index]).standard_normal(shape, dtype=np.float32)

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        if not hasattr(self, "inner"):
            self.setup()
        # Every noisy copy explains the class the clean image resolves to.
        resolved, classes = list(targets), np.full(len(inputs), -1, dtype=np.int64)
        scores = np.zeros(len(inputs), dtype=np.float32)
        class_rows = [i for i, t in enumerate(targets) if t.kind != "neuron"]
        if class_rows:
            logits = self.adapter.logits(inputs[class_rows])
            classes[class_rows] = resolve_classes([targets[i] for i in class_rows], logits)
            scores[class_rows] = select_scores(logits, classes[class_rows], self.params.score)
            for i in class_rows:
                resolved[i] = Target("class", class_index=int(classes[i]))
        neuron_rows = [i for i, t in enumerate(targets) if t.kind == "neuron"]
        if neuron_rows:  # the unit's value on the clean image, as the inner method reports it
            scores[neuron_rows] = self.inner.attribute(inputs[neuron_rows], [targets[i] for i in neuron_rows]).scores

        samples, chunk = self.params.samples, self.params.batch_size or self.batch_hint
        maps, images, extras = [], [], []
        for x, target in zip(inputs, resolved):
            sigma = self.params.noise * float(x.max() - x.min())

            def noisy_sums(start: int, stop: int, x=x, target=target, sigma=sigma) -> dict:
                copies = np.stack([x + sigma * self.noise(k, x.shape) for k in range(start, stop)]).astype(np.float32)
                part = self.inner.attribute(copies, [target] * (stop - start))
                sums = {"maps": part.maps.astype(np.float64).sum(axis=0)}
                if part.images is not None:
                    sums["images"] = part.images.astype(np.float64).sum(axis=0)
                for key, value in part.extras.items():
                    if np.issubdtype(np.asarray(value).dtype, np.floating):
                        sums[f"extra:{key}"] = np.asarray(value, dtype=np.float64).sum(axis=0)
                return sums

            parts = self.scheduler.map_batches(noisy_sums, samples, chunk, desc=self.name)
            mean = {key: sum(p[key] for p in parts) / samples for key in parts[0]}
            maps.append(mean["maps"])
            images.append(mean.get("images"))
            extras.append({key[len("extra:"):]: v for key, v in mean.items() if key.startswith("extra:")})
        return Attribution(
            maps=np.stack(maps).astype(np.float32),
            classes=classes,
            scores=scores,
            images=None if images[0] is None else np.stack(images).astype(np.float32),
            extras={key: np.stack([e[key] for e in extras]).astype(np.float32) for key in extras[0]},
        )


@hookimpl
def cnnviz_methods():
    return [SmoothGrad]
