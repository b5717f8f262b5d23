"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019): how far the
map, read as a linear model of the score, misses the score's change under
random perturbations: E_I[(Iᵀ Φ − (f(x) − f(x − I)))²].

Definition choices:
- I is Gaussian noise of standard deviation ``noise`` in normalized input
  units, per channel and pixel (the paper's "noisy baseline"), ``samples``
  draws per image, seeded by ``seed`` and the image's name so every method
  meets the same noise;
- a map has one value per pixel, so Iᵀ Φ = Σ_{c,h,w} I_chw Φ_hw (the map
  applied to every channel);
- f is the target class's logit by default (``--score prob`` for the
  probability);
- ``normalize`` (default on) first scales the map by the β that minimises
  the infidelity, β = E[IᵀΦ · Δf] / E[(IᵀΦ)²], as Captum's
  ``infidelity(normalize=True)`` and the paper's experiments: methods' maps
  come in arbitrary units (Grad-CAM's are rectified channel sums), and the
  metric should judge their shape, not their scale;
- lower is better; 0 for a map that is exactly the model's linear response.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Metric, MetricBatch, MetricScores, PerturbationParams, hookimpl, param

from cnnviz_plugins.evaluation.support.baselines import image_rng


@dataclasses.dataclass
class InfidelityParams(PerturbationParams):
    score: str = param("logit", "the model output watched: the target's logit or softmax probability", choices=("logit", "prob"))
    samples: int = param(32, "noise draws per image", minimum=1)
    noise: float = param(0.1, "standard deviation of the Gaussian perturbation, in normalized input units", minimum=0.0)
    normalize: bool = param(True, "scale each map by the factor that minimises its infidelity first")
    seed: int = param(0, "seed of the noise (with each image's name)")


class Infidelity(Metric):
    """Infidelity (Yeh et al. 2019): mean squared miss of the map's linear prediction of the score change under noise; lower is better."""

    name = "infidelity"
    Params = InfidelityParams
    requires = frozenset({"forward"})
    higher_is_better = False

    def noise(self, batch: MetricBatch) -> np.ndarray:
        """(b, samples, 3, H, W) perturbations."""
        p = self.params
        shape = (p.samples, *batch.inputs.shape[1:])
        return np.stack([image_rng(p.seed, name, "infidelity").normal(0.0, p.noise, size=shape).astype(np.float32)
                         for name in batch.names])

    def evaluate(self, batch: MetricBatch) -> MetricScores:
        p = self.params
        b = len(batch)
        perturbations = self.noise(batch)
        inputs = np.asarray(batch.inputs, dtype=np.float32)
        classes = np.asarray(batch.classes, dtype=np.int64)
        clean = self.forward.scores(inputs, classes)

        def build(lo: int, hi: int, device: str):
            items = np.arange(lo, hi)
            return inputs[items // p.samples] - perturbations[items // p.samples, items % p.samples]

        perturbed = self.forward.scores_of(b * p.samples, build, np.repeat(classes, p.samples)).reshape(b, p.samples)
        drops = clean[:, None] - perturbed
        predicted = np.einsum("bschw,bhw->bs", perturbations.astype(np.float64), np.asarray(batch.maps, dtype=np.float64))
        if p.normalize:
            energy = (predicted * predicted).mean(axis=1)
            beta = np.where(energy > 0, (predicted * drops).mean(axis=1) / np.where(energy > 0, energy, 1), 0.0)
            predicted = predicted * beta[:, None]
        return MetricScores(((predicted - drops) ** 2).mean(axis=1))


@hookimpl
def cnnviz_methods():
    return [Infidelity]
