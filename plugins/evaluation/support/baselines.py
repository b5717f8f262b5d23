"""What perturbed pixels become, for the faithfulness metrics, and seeded
random draws that belong to an image (its name) rather than to a batch: every
method evaluated on an image meets the same noise and the same random subsets."""

from __future__ import annotations

import zlib

import numpy as np

BASELINES = ("mean", "black", "blur", "uniform")


def image_rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def baseline_images(inputs: np.ndarray, kind: str, config, sigma: float = 5.0, seed: int = 0,
                    names: list[str] | None = None, purpose: str = "baseline") -> np.ndarray:
    """Normalized (b, 3, H, W) baselines: ``mean`` 0 after normalization (the
    dataset's mean colour), ``black`` pixel value 0, ``blur`` a Gaussian blur of
    ``sigma`` pixels, ``uniform`` pixels drawn from U(0, 1) (seeded per image name)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, 3, 1, 1)
    if kind == "mean":
        return np.zeros_like(inputs)
    if kind == "black":
        return np.broadcast_to(-mean / std, inputs.shape).astype(np.float32)
    if kind == "blur":
        from cnnviz_core.toolkit import gaussian_blur

        return gaussian_blur(inputs, sigma)
    if kind == "uniform":
        names = names or [str(i) for i in range(len(inputs))]
        pixels = np.stack([image_rng(seed, name, purpose).random(inputs.shape[1:], dtype=np.float32) for name in names])
        return ((pixels - mean) / std).astype(np.float32)
    raise ValueError(f"unknown baseline {kind!r}; one of {BASELINES}")
