"""Class model visualization and activation maximization as a cnnviz plugin.

Gradient ascent on the image for a target: a class logit (Simonyan, Vedaldi &
Zisserman 2014, "Deep Inside Convolutional Networks"), a channel's mean
activation (``layer:channel``) or one unit (``layer:channel@y,x``).

- ``--mode plain``: Simonyan et al.: start from the zero image in the model's
  normalized space (the dataset mean), maximize S(I) − λ·mean(I²) with plain
  gradient steps; pixels are kept displayable (projected onto [0, 1]) so the
  image returned is exactly the one optimized.
- ``--mode readable`` (default): the recipe of Olah, Mordvintsev & Schubert
  (Distill 2017, "Feature Visualization"): spectral parameterization with
  decorrelated colour and a sigmoid (``image_param``), random shift / scale /
  rotation each step (``image_transforms``), an anisotropic total-variation
  penalty (``image_priors``), Adam. Plain ascent gives the high-frequency patterns that fool the network;
  this gives pictures a person can read.

Settings left unset take the mode's default (see :meth:`ClassModel.recipe`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core import Capability, InputError, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param, validate_targets
from cnnviz_core.toolkit import frozen_parameters

from cnnviz_plugins.synthesis.support.image_param import PlainImage, ReadableImage
from cnnviz_plugins.synthesis.support.image_priors import anisotropic_total_variation
from cnnviz_plugins.synthesis.support.image_transforms import random_affine
from cnnviz_plugins.synthesis.support.objectives import forward, layers_needed, objective_values

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

IMAGE_EVERY = 10  # hand the current image to the best-so-far keeper every N steps


@dataclasses.dataclass
class ClassModelParams(SynthesisParams):
    mode: str = param("readable", "plain: Simonyan et al.'s gradient ascent on the pixels; readable: Lucid-style "
                      "FFT + decorrelated colour + transformation robustness + Adam", choices=("readable", "plain"))
    steps: int = param(256, "optimization steps", minimum=1)
    lr: float | None = param(None, "step size: Adam's learning rate (readable, default 0.05) or the plain gradient "
                             "step (plain, default 3)", minimum=0)
    l2: float | None = param(None, "weight λ of the penalty λ·mean(I²), I the image in the model's normalized space "
                             "(default: plain 100, readable 0)", minimum=0)
    tv: float | None = param(None, "weight of the total-variation penalty (mean |difference| of neighbouring pixels; "
                             "default: readable 0.25, plain 0)", minimum=0)
    jitter: int | None = param(None, "random shift of up to this many pixels each step (default: readable 8, plain 0)", minimum=0)
    scales: str | None = param(None, "random scale range 'LOW,HIGH' each step (default: readable '0.9,1.1', plain '1,1')")
    rotate: float | None = param(None, "random rotation of up to this many degrees each step (default: readable 10, plain 0)", minimum=0)
    decorrelate: bool | None = param(None, "optimize decorrelated colour channels (readable mode; default on)")
    fft: bool | None = param(None, "optimize the image's spectrum with 1/f scaling instead of its pixels (readable mode; default on)")
    batch_size: int | None = param(None, "targets optimized together (default 8); halved on out-of-memory", minimum=1)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The settings in force once each unset parameter took its mode's default."""

    lr: float
    l2: float
    tv: float
    jitter: int
    scales: tuple[float, float]
    rotate: float
    fft: bool
    decorrelate: bool

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "scales": list(self.scales)}


MODE_DEFAULTS = {
    # Adam's step 0.05 on the spectral parameters, as in Lucid; a light TV
    # removes pixel-level speckle (at 1 it visibly blurs shapes on Lite0).
    "readable": dict(lr=0.05, l2=0.0, tv=0.25, jitter=8, scales=(0.9, 1.1), rotate=10.0, fft=True, decorrelate=True),
    # On EfficientNet-Lite0 at 224 px a logit's gradient starts near 3e-5 per
    # normalized pixel and grows to ~4e-3 as the class appears: steps above
    # ~10 make the logit oscillate instead of rise, 3 climbs steadily (also at
    # 128 px). The penalty's gradient per pixel is 2λ·I/(3HW), 1.3e-3 at
    # |I| = 1 for λ = 100: of the order of the logit's, so pixels the class
    # does not use fade back to the mean (λ = 10 leaves the whole image
    # saturated, λ = 1000 greys the class out too).
    "plain": dict(lr=3.0, l2=100.0, tv=0.0, jitter=0, scales=(1.0, 1.0), rotate=0.0, fft=False, decorrelate=False),
}


def parse_scales(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        parts = [float(p) for p in str(text).replace(" ", "").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 0 < parts[0] <= parts[1] or not np.isfinite(parts).all():
        raise InputError(f"class_model: --scales must be 'LOW,HIGH' with 0 < LOW <= HIGH (e.g. '0.9,1.1'), got {text!r}")
    return parts[0], parts[1]


class ClassModel(SynthesisMethod):
    """Class model visualization / activation maximization: an image that maximizes a class logit, a channel or a neuron."""

    name = "class_model"
    requires = frozenset({Capability.GRADIENTS})
    Params = ClassModelParams
    needs_image = False
    higher_is_better = True
    batch_hint = 8
    demo_params = {"steps": 96}  # one target at 224 px: the ostriches show by then; about 45 s on two cores

    @classmethod
    def demo_target(cls, adapter, inputs):
        """9 "ostrich" (the lecture's example)."""
        return [9]

    @classmethod
    def check_params(cls, params) -> None:
        parse_scales(params.scales)
        if params.mode == "plain" and (params.fft or params.decorrelate):
            raise InputError("class_model: --fft and --decorrelate belong to --mode readable; plain mode optimizes the pixels "
                             "themselves, as Simonyan et al. did")

    def recipe(self) -> Recipe:
        given = {
            "lr": self.params.lr, "l2": self.params.l2, "tv": self.params.tv, "jitter": self.params.jitter,
            "scales": parse_scales(self.params.scales), "rotate": self.params.rotate,
            "fft": self.params.fft, "decorrelate": self.params.decorrelate,
        }
        defaults = MODE_DEFAULTS[self.params.mode]
        return Recipe(**{key: defaults[key] if value is None else value for key, value in given.items()})

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"class", "neuron"}, self.name, self.adapter,
                         advice="top1 needs an input image; class_model makes one from the target alone (e.g. 9 or ostrich)")

    def synthesize(self, images, targets) -> Synthesis:
        import torch

        recipe = self.recipe()
        adapter, device = self.adapter, self.adapter.device
        count, steps = len(targets), self.params.steps
        size = tuple(adapter.config.input_size)
        generators = self.generators(count)
        if self.params.mode == "plain":
            image = PlainImage(count, size, adapter.config.mean, adapter.config.std, device)
            optimizer = torch.optim.SGD(image.parameters(), lr=recipe.lr)
        else:
            image = ReadableImage(count, size, generators, device, fft=recipe.fft, decorrelate=recipe.decorrelate)
            optimizer = torch.optim.Adam(image.parameters(), lr=recipe.lr)
        layers, need_logits = layers_needed(targets), any(t.kind == "class" for t in targets)
        objective = np.zeros((count, steps), dtype=np.float32)
        losses = np.zeros((count, steps), dtype=np.float32)

        with frozen_parameters(adapter.module), torch.enable_grad():
            start, _ = self._evaluate(image.pixels().detach(), targets, layers)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                pixels = image.pixels()
                seen = random_affine(pixels, generators, recipe.jitter, recipe.scales, recipe.rotate)
                logits, outputs = forward(adapter, self.to_model(seen), layers, need_logits)
                values = objective_values(targets, logits, outputs)
                loss = -values
                if recipe.l2:
                    loss = loss + recipe.l2 * self.to_model(pixels).pow(2).flatten(1).mean(1)
                if recipe.tv:
                    loss = loss + recipe.tv * anisotropic_total_variation(pixels)
                loss.sum().backward()
                optimizer.step()
                image.clamp_()
                objective[:, step] = values.detach().cpu().numpy()
                losses[:, step] = loss.detach().cpu().numpy()
                shown = pixels if step % IMAGE_EVERY == 0 else None
                self.step_done(step, shown, objective[:, step] if shown is not None else None)
            final = image.pixels().detach()
            end, logits = self._evaluate(final, targets, layers)

        probabilities = torch.softmax(logits.float(), dim=1)
        classes = probabilities.argmax(dim=1)
        records = [
            {"start": float(a), "end": float(b), "mode": self.params.mode, "recipe": recipe.to_json()}
            for a, b in zip(start, end)
        ]
        return Synthesis(
            images=final.float().cpu().numpy(),
            history={"objective": objective, "loss": losses},
            classes=classes.cpu().numpy(),
            scores=probabilities.gather(1, classes[:, None])[:, 0].cpu().numpy(),
            records=records,
        )

    def _evaluate(self, pixels: torch.Tensor, targets, layers) -> tuple[np.ndarray, torch.Tensor]:
        """The targets' values on the untransformed image, and the logits."""
        import torch

        with torch.no_grad():
            logits, outputs = forward(self.adapter, self.to_model(pixels), layers, need_logits=True)
            return objective_values(targets, logits, outputs).cpu().numpy(), logits


@hookimpl
def cnnviz_methods():
    return [ClassModel]
