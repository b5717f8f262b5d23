"""DeepDream (Mordvintsev, Olah & Tyka 2015, "Inceptionism") as a cnnviz
plugin: amplify what a layer already sees in a photograph.

Per octave, from the smallest: the image (the photo at that size plus the
detail dreamt so far, upscaled) is rolled by a random shift, the gradient of
the objective is taken, and the image moves by ``lr`` times the gradient
divided by its mean absolute value (per item), then is rolled back and kept in
[0, 1]. The objective of the default target is the mean of squares of the
whole ``--layer`` output: its gradient is the activation itself (up to a
constant the normalized step removes), the original's "L2" objective —
strong features grow stronger. ``layer:channel`` amplifies one channel (its
mean activation), ``layer:channel@y,x`` one unit, a class its logit.

Default layer (the adapter's ``mid_level_layer``): one stage before the
last, where DeepDream's mixed4 layers sat in GoogLeNet — parts of objects, not
edges and not whole classes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core import (
    TARGET_KINDS, Capability, InputError, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param,
    validate_targets,
)
from cnnviz_core.toolkit import frozen_parameters

from cnnviz_plugins.synthesis.support.objectives import forward, layers_needed, objective_values

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

MIN_OCTAVE_SIDE = 16  # pixels: below this the network's mid-level maps vanish
IMAGE_EVERY = 10


@dataclasses.dataclass
class DeepDreamParams(SynthesisParams):
    layer: str | None = param(None, "layer whose whole output the default target (top1) amplifies (default: the model's "
                              "mid-level layer, one stage before the last; see `cnnviz models --layers MODEL`); "
                              "--target layer:channel[@y,x] amplifies one channel or unit instead, a class its logit")
    steps: int = param(10, "gradient steps per octave", minimum=1)
    lr: float = param(0.01, "step size in pixels (of [0, 1]) per step, times gradient / mean |gradient|", minimum=0)
    octaves: int = param(4, "number of scales, each --octave-scale times smaller than the next", minimum=1)
    octave_scale: float = param(1.4, "size ratio between successive octaves", minimum=1.0)
    jitter: int = param(32, "random roll of up to this many pixels before each step", minimum=0)
    batch_size: int | None = param(None, "images dreamt together (default 8); halved on out-of-memory", minimum=1)


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """From the smallest octave to the full size."""
    return [(round(size[0] / scale**k), round(size[1] / scale**k)) for k in reversed(range(octaves))]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


class DeepDream(SynthesisMethod):
    """DeepDream: amplify a layer's activations (or one channel's) in a photo, over octaves with jitter."""

    name = "deepdream"
    requires = frozenset({Capability.GRADIENTS})
    Params = DeepDreamParams
    needs_image = True
    higher_is_better = True
    batch_hint = 8
    demo_params = {"steps": 8, "octaves": 4}

    def steps_per_item(self) -> int:
        return self.params.steps * self.params.octaves

    def setup(self) -> None:
        self._layer = self.params.layer or self.adapter.mid_level_layer()
        self.adapter.check_layer(self._layer)
        self._sizes = octave_sizes(tuple(self.adapter.config.input_size), self.params.octaves, self.params.octave_scale)
        smallest = min(self._sizes[0])
        if smallest < MIN_OCTAVE_SIDE:
            raise InputError(
                f"deepdream: {self.params.octaves} octaves at scale {self.params.octave_scale} shrink the image to "
                f"{self._sizes[0][0]}x{self._sizes[0][1]} pixels (under {MIN_OCTAVE_SIDE}); use fewer --octaves or a smaller --octave-scale"
            )
        fixed = self.adapter.fixed_input_size()
        if fixed is not None and len(set(self._sizes)) > 1:
            raise InputError(f"deepdream: model {self.adapter.name!r} takes only {fixed[0]}x{fixed[1]} inputs (a fixed "
                             "patch grid), so its octaves cannot shrink the image; use --octaves 1")
        self._reference = self.adapter.layer_shapes([self._layer])

    def check_targets(self, targets) -> None:
        validate_targets(targets, TARGET_KINDS, self.name, self.adapter)
        neuron_layers = sorted({t.layer for t in targets if t.kind == "neuron"})
        if neuron_layers:
            self._reference.update(self.adapter.layer_shapes(neuron_layers))

    def synthesize(self, images, targets) -> Synthesis:
        import torch

        adapter, device = self.adapter, self.adapter.device
        count, steps = len(targets), self.params.steps
        generators = self.generators(count)
        layers = layers_needed(targets, self._layer)
        need_logits = any(t.kind == "class" for t in targets)
        original = torch.from_numpy(images).to(device)
        history = np.zeros((count, steps * len(self._sizes)), dtype=np.float32)

        with frozen_parameters(adapter.module), torch.enable_grad():
            start, _ = self._evaluate(original, targets, layers)
            detail = torch.zeros((count, 3, *self._sizes[0]), device=device)
            for octave, size in enumerate(self._sizes):
                base = _resize(original, size)
                image = (base + _resize(detail, size)).clamp(0.0, 1.0)
                for step in range(steps):
                    index = octave * steps + step
                    image, values = self._step(image, targets, layers, need_logits, generators)
                    history[:, index] = values
                    shown = image if size == self._sizes[-1] and (step % IMAGE_EVERY == 0 or step == steps - 1) else None
                    self.step_done(index, shown, values if shown is not None else None)
                detail = image - base
            end, logits = self._evaluate(image, targets, layers)

        probabilities = torch.softmax(logits.float(), dim=1)
        classes = probabilities.argmax(dim=1)
        records = [{"start": float(a), "end": float(b), "layer": self._layer} for a, b in zip(start, end)]
        return Synthesis(
            images=image.float().cpu().numpy(),
            history={"objective": history},
            classes=classes.cpu().numpy(),
            scores=probabilities.gather(1, classes[:, None])[:, 0].cpu().numpy(),
            records=records,
        )

    def _step(self, image: torch.Tensor, targets, layers, need_logits, generators) -> tuple[torch.Tensor, np.ndarray]:
        """One normalized gradient step on each item's randomly rolled image."""
        import torch

        jitter = self.params.jitter
        shifts = [_roll_shift(g, jitter) for g in generators[: len(image)]]
        rolled = torch.stack([torch.roll(x, s, dims=(1, 2)) for x, s in zip(image, shifts)]).requires_grad_(True)
        logits, outputs = forward(self.adapter, self.to_model(rolled), layers, need_logits)
        values = objective_values(targets, logits, outputs, self._layer, self._reference)
        (gradient,) = torch.autograd.grad(values.sum(), rolled)
        scale = gradient.abs().flatten(1).mean(1).clamp_min(1e-12)[:, None, None, None]
        moved = (rolled.detach() + self.params.lr * gradient / scale).clamp(0.0, 1.0)
        image = torch.stack([torch.roll(x, (-s[0], -s[1]), dims=(1, 2)) for x, s in zip(moved, shifts)])
        return image, values.detach().cpu().numpy()

    def _evaluate(self, pixels: torch.Tensor, targets, layers) -> tuple[np.ndarray, torch.Tensor]:
        """The objective on the unrolled image at full size, and the logits."""
        import torch

        with torch.no_grad():
            logits, outputs = forward(self.adapter, self.to_model(pixels), layers, need_logits=True)
            return objective_values(targets, logits, outputs, self._layer, self._reference).cpu().numpy(), logits


def _roll_shift(generator: torch.Generator, jitter: int) -> tuple[int, int]:
    import torch

    if jitter == 0:
        return 0, 0
    dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
    return int(dy), int(dx)


@hookimpl
def cnnviz_methods():
    return [DeepDream]
