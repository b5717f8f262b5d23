"""Inputs with random pixel subsets replaced, made lazily on the runner's
device: job item j is image ``j // runs`` with subset ``j % runs`` taken from
the baseline (faithfulness correlation)."""

from __future__ import annotations

import numpy as np


class SubsetReplacement:
    def __init__(self, inputs: np.ndarray, baselines: np.ndarray, subsets: np.ndarray):
        """``subsets``: (b, runs, k) flat pixel indices per image and run."""
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.baselines = np.ascontiguousarray(baselines, dtype=np.float32)
        self.subsets = np.asarray(subsets, dtype=np.int64)
        self._on: dict[str, tuple] = {}

    def __len__(self) -> int:
        return self.subsets.shape[0] * self.subsets.shape[1]

    def __call__(self, lo: int, hi: int, device: str = "cpu"):
        import torch

        if device not in self._on:
            self._on[device] = tuple(torch.as_tensor(a).to(device) for a in (self.inputs, self.baselines, self.subsets))
        inputs, baselines, subsets = self._on[device]
        b, runs, _ = self.subsets.shape
        height, width = self.inputs.shape[2:]
        items = torch.arange(lo, hi, device=inputs.device)
        image, run = items // runs, items % runs
        mask = torch.zeros((hi - lo, height * width), dtype=torch.bool, device=inputs.device)
        mask.scatter_(1, subsets[image, run], True)
        mask = mask.view(-1, 1, height, width)
        return torch.where(mask, baselines[image], inputs[image])
