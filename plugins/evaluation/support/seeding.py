"""Random draws that belong to an image, not to a batch: a metric seeded by
its ``seed`` parameter and the image's name gives each image the same noise
(or the same random class) whatever the batching, the worker or the method
evaluated — so methods are compared on identical perturbations."""

from __future__ import annotations

import zlib

import numpy as np


def image_rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """A generator for one image and one use (``purpose`` keeps two metrics'
    draws for the same image independent)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])
