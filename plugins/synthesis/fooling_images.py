"""Fooling images (Nguyen, Yosinski & Clune, CVPR 2015) as a cnnviz plugin:
images a model labels with high confidence that mean nothing to a person.

The search needs no gradients (forward passes only), so it runs on ONNX
models too. One item per target class; each item evolves its own population
(see :mod:`cnnviz_plugins.synthesis.support.evolution`). The paper ran MAP-Elites over all 1000
classes at once; with one target per item its archive is one cell, so here
each item keeps its μ best genomes instead ((μ + λ) selection)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import (
    Capability, CapabilityError, InputError, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param, validate_targets,
)
from cnnviz_core.toolkit import frozen_parameters

from cnnviz_plugins.synthesis.support.attacks import Goal, sign_attack
from cnnviz_plugins.synthesis.support.evolution import DirectEncoding, SmoothEncoding, evolve

ENCODINGS = ("direct", "smooth", "gradient")
FORWARD_CHUNK = 64  # images per forward pass when a generation is evaluated (halved on out-of-memory)


@dataclasses.dataclass
class FoolingParams(SynthesisParams):
    encoding: str = param(
        "smooth",
        "direct: one gene per pixel value (the paper's direct encoding); smooth: a coarse colour grid upsampled "
        "bicubically, so images are smooth patterns; gradient: gradient ascent on the class's log-probability from "
        "noise (torch models only; the others need forward passes alone and run on ONNX)",
        choices=ENCODINGS,
    )
    generations: int = param(100, "generations of the evolution (gradient: ascent steps); an item stops once it reaches --confidence", minimum=1)
    population: int = param(32, "lambda: children per item and generation, and the size of the random first population", minimum=1)
    parents: int = param(8, "mu: the best genomes each item keeps as parents ((mu + lambda) selection)", minimum=1)
    mutation_rate: float = param(0.1, "probability that a gene mutates (the paper's direct encoding: 0.1)", minimum=0.0)
    mutation_size: float = param(0.2, "standard deviation of a mutation, in pixel units of [0, 1]", minimum=0.0)
    grid: int = param(8, "smooth: side of the colour grid that is upsampled to the image", minimum=1)
    confidence: float = param(0.99, "stop an item once the model gives its class this probability", minimum=0.0)
    step_size: float = param(2 / 255, "gradient: pixel step along the gradient's sign", minimum=0.0)


class FoolingImages(SynthesisMethod):
    """Fooling images (Nguyen et al. 2015): evolved images a model labels with high confidence.

    Targets: class indices or labels, one item each. History "objective": the
    best probability of the target class after each generation."""

    name = "fooling_images"
    requires = frozenset({Capability.FORWARD})
    Params = FoolingParams
    needs_image = False
    higher_is_better = True
    batch_hint = 4
    # velvet reaches p=0.95 at generation 46 on lite0 (ONNX, about 30 CPU-seconds); rock beauty only 0.83 after 80
    demo_params = {"generations": 60, "population": 16, "parents": 4, "confidence": 0.95}

    @classmethod
    def demo_target(cls, adapter, inputs):
        if adapter.num_classes == 1000:
            return [885]  # ImageNet's velvet: what smooth patterns at 224 px drift to, and reach (measured)
        return [0, adapter.num_classes - 1]

    @classmethod
    def check_params(cls, params) -> None:
        if params.parents > params.population:
            raise InputError(f"fooling_images: --parents ({params.parents}) cannot exceed --population ({params.population})")
        if not 0 < params.mutation_rate <= 1:
            raise InputError(f"fooling_images: --mutation-rate must be in (0, 1], got {params.mutation_rate}")
        if not 0 < params.confidence <= 1:
            raise InputError(f"fooling_images: --confidence must be in (0, 1], got {params.confidence}")

    def setup(self) -> None:
        if self.params.encoding == "gradient" and Capability.GRADIENTS not in self.adapter.capabilities:
            raise CapabilityError(
                "fooling_images --encoding gradient", self.adapter.name, {str(Capability.GRADIENTS)},
                ["fooling_images --encoding smooth", "fooling_images --encoding direct"],
            )

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"class"}, self.name, advice="fooling_images makes an image of each class given")

    def steps_per_item(self) -> int:
        return self.params.generations

    def synthesize(self, images, targets) -> Synthesis:
        classes = np.array([t.class_index for t in targets], dtype=np.int64)
        if self.params.encoding == "gradient":
            pixels, log_probs, history, facts = self._ascend(classes)
        else:
            pixels, log_probs, history, facts = self._evolve(classes)
        probs = np.exp(log_probs.astype(np.float64))
        reached = probs[np.arange(len(classes)), classes]
        labels = self.adapter.labels
        records = [
            {"encoding": self.params.encoding, "target_class": int(c),
             "target_label": labels[c] if labels is not None and c < len(labels) else None,
             "confidence": float(reached[i]), "reached": bool(reached[i] >= self.params.confidence), **facts[i]}
            for i, c in enumerate(classes)
        ]
        return Synthesis(
            images=pixels.astype(np.float32),
            history={"objective": history.astype(np.float32)},
            classes=probs.argmax(axis=1),
            scores=probs.max(axis=1).astype(np.float32),
            extras={"confidence": reached.astype(np.float32)},
            records=records,
        )

    def _log_probs(self, pixels: np.ndarray) -> np.ndarray:
        """Log-softmax of the model on [0, 1] pixels, through the adapter (torch or ONNX)."""
        def chunk(start: int, stop: int) -> np.ndarray:
            logits = self.adapter.logits(self.to_model(pixels[start:stop])).astype(np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

        return np.concatenate(self.scheduler.map_batches(chunk, len(pixels), FORWARD_CHUNK, desc=f"{self.name}.forward"))

    def _evolve(self, classes: np.ndarray):
        p = self.params
        size = self.adapter.config.input_size
        encoding = DirectEncoding(size) if p.encoding == "direct" else SmoothEncoding(size, p.grid)

        def report(generation, best, objective):
            keep = generation % 10 == 9 or generation == p.generations - 1
            self.step_done(generation, encoding.render(best) if keep else None, objective)

        result = evolve(encoding, self._log_probs, classes, self.rngs(len(classes)), p.generations, p.population,
                        p.parents, p.mutation_rate, p.mutation_size, p.confidence, report)
        facts = [{"generations": int(g), "evaluations": int(e)} for g, e in zip(result.generations, result.evaluations)]
        return encoding.render(result.best), result.log_probs, result.history, facts

    def _ascend(self, classes: np.ndarray):
        """Targeted sign-gradient ascent from uniform noise, unbounded (an
        iterative FGSM whose ball is the whole [0, 1] box)."""
        import torch

        p = self.params
        module, device = self.adapter.module, self.adapter.device
        noise = torch.stack([torch.rand((3, *self.adapter.config.input_size), generator=g, device=device)
                             for g in self.generators(len(classes), device)])
        goal = Goal(torch.from_numpy(classes).to(device), torch.ones(len(classes), dtype=torch.bool, device=device), p.confidence)

        def logits_of(pixels):
            return module(self.to_model(pixels).contiguous(memory_format=torch.channels_last))

        def report(step, images, objective):
            self.step_done(step, images if step % 10 == 9 or step == p.generations - 1 else None, objective)

        with frozen_parameters(module):
            result = sign_attack(logits_of, noise, goal, 1.0, p.step_size, p.generations, None, True, report)
        log_probs = torch.log_softmax(result.logits, dim=1).cpu().numpy()
        facts = [{"generations": int(s), "evaluations": int(s) + 1} for s in result.steps]
        return result.images.cpu().numpy(), log_probs, result.history, facts


@hookimpl
def cnnviz_methods():
    return [FoolingImages]
