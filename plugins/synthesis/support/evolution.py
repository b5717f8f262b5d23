"""Gradient-free search for images a classifier labels with high confidence
(Nguyen, Yosinski & Clune 2015): genome encodings and a (μ + λ) evolution
strategy that evolves one population per target, all populations evaluated
together in batched forward passes.

Encodings map a genome (float32 array, genes in [0, 1]) to pixels in [0, 1]:
- ``direct``: one gene per pixel value, as the paper's direct encoding;
- ``smooth``: a coarse grid of colours upsampled bicubically, so images look
  like smooth patterns (a low-frequency stand-in for the paper's CPPNs).
Mutation, as in the paper's direct encoding: each gene mutates with
probability ``rate``, by a Gaussian step of standard deviation ``size``,
clipped to [0, 1] (the paper used polynomial mutation; Gaussian is the
textbook equivalent).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


class DirectEncoding:
    name = "direct"

    def __init__(self, size: tuple[int, int]):
        self.shape = (3, *size)

    def render(self, genomes: np.ndarray) -> np.ndarray:
        return genomes.astype(np.float32, copy=False)


class SmoothEncoding:
    """A ``grid`` x ``grid`` colour grid, upsampled bicubically to the image."""

    name = "smooth"

    def __init__(self, size: tuple[int, int], grid: int):
        self.size = size
        self.shape = (3, grid, grid)

    def render(self, genomes: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        grids = torch.from_numpy(np.ascontiguousarray(genomes, dtype=np.float32))
        pixels = F.interpolate(grids, size=self.size, mode="bicubic", align_corners=False)
        return pixels.clamp_(0, 1).numpy()


def random_genomes(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise, as the paper's initial population."""
    return rng.random((count, *shape), dtype=np.float32)


def mutate(parents: np.ndarray, rate: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """Each gene mutates with probability ``rate`` by N(0, size²), clipped to [0, 1]."""
    mask = rng.random(parents.shape, dtype=np.float32) < rate
    steps = rng.standard_normal(parents.shape, dtype=np.float32) * np.float32(size)
    return np.clip(parents + mask * steps, 0.0, 1.0)


@dataclasses.dataclass
class Population:
    """One item's parents, best first, with their fitness (log-probability of the target)."""

    genomes: np.ndarray
    fitness: np.ndarray
    generations: int = 0
    evaluations: int = 0


@dataclasses.dataclass
class EvolutionResult:
    best: np.ndarray  # (b, *genome) the best genome per item
    log_probs: np.ndarray  # (b, classes) the model's log-softmax on each best image
    history: np.ndarray  # (b, generations) the best target probability after each generation
    generations: np.ndarray  # (b,) generations run
    evaluations: np.ndarray  # (b,) images evaluated


def evolve(
    encoding,
    log_probs_of: Callable[[np.ndarray], np.ndarray],
    classes: np.ndarray,
    rngs: list[np.random.Generator],
    generations: int,
    population: int,
    parents: int,
    rate: float,
    size: float,
    confidence: float,
    on_generation: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> EvolutionResult:
    """A (μ + λ) evolution strategy per item, μ = ``parents``, λ = ``population``.

    Start: λ random genomes. Each generation, every item still searching draws
    λ children, each a mutated copy of one of its μ parents picked uniformly;
    the best μ of parents and children become the next parents (elitist: the
    best never gets worse). Fitness is the target's log-probability (same order
    as the probability, without its saturation near 1). An item stops once its
    best image reaches ``confidence``. All searching items' children go through
    the model in one call of ``log_probs_of(pixels) -> (n, classes) log-softmax``."""
    count = len(classes)
    first = np.stack([random_genomes(encoding.shape, population, rng) for rng in rngs])
    scores = _evaluate(encoding, log_probs_of, first, classes)
    pops = []
    for i in range(count):
        order = np.argsort(-scores[i], kind="stable")[:parents]
        pops.append(Population(first[i][order], scores[i][order], 0, population))
    history = np.zeros((count, generations), dtype=np.float32)
    for g in range(generations):
        searching = [i for i in range(count) if np.exp(pops[i].fitness[0]) < confidence]
        if searching:
            children = np.stack([
                mutate(pops[i].genomes[rngs[i].integers(0, len(pops[i].genomes), population)], rate, size, rngs[i])
                for i in searching
            ])
            child_scores = _evaluate(encoding, log_probs_of, children, classes[searching])
            for k, i in enumerate(searching):
                pool = np.concatenate([pops[i].genomes, children[k]])
                fitness = np.concatenate([pops[i].fitness, child_scores[k]])
                order = np.argsort(-fitness, kind="stable")[:parents]
                pops[i] = Population(pool[order], fitness[order], pops[i].generations + 1, pops[i].evaluations + population)
        history[:, g] = [np.exp(p.fitness[0]) for p in pops]
        if on_generation is not None:
            on_generation(g, np.stack([p.genomes[0] for p in pops]), history[:, g])
        if not searching:
            history[:, g:] = history[:, g:g + 1]
            break
    best = np.stack([p.genomes[0] for p in pops])
    return EvolutionResult(
        best=best,
        log_probs=log_probs_of(encoding.render(best)),
        history=history,
        generations=np.array([p.generations for p in pops]),
        evaluations=np.array([p.evaluations for p in pops]),
    )


def _evaluate(encoding, log_probs_of, genomes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(items, λ, *genome) → (items, λ) the target's log-probability."""
    items, lam = genomes.shape[:2]
    log_probs = log_probs_of(encoding.render(genomes.reshape(items * lam, *genomes.shape[2:])))
    return log_probs.reshape(items, lam, -1)[np.arange(items)[:, None], np.arange(lam)[None], classes[:, None]]
