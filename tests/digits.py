"""A real model with real labels for the dataset analyses: a small CNN trained
in a few seconds on scikit-learn's 8×8 digits (1,797 labelled images).

Images are grey 8×8 digits replicated to RGB, pixels in [0, 1]; the adapter's
preprocessing is the identity resize to 8×8 and mean = std = 0.5."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig

DIGITS_CONFIG = PreprocessConfig(input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="nearest")
CLASS_NAMES = [str(d) for d in range(10)]


class DigitsNet(nn.Module):
    """conv-relu-conv-relu-maxpool-conv-relu-GAP-linear: 8×8 → 4×4 features."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train pixels, train labels, test pixels, test labels); pixels are
    (N, 8, 8) float32 in [0, 1]; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(pixels))
    cut = int(0.8 * len(pixels))
    train, test = order[:cut], order[cut:]
    return pixels[train], digits.target[train], pixels[test], digits.target[test]


def to_inputs(pixels: np.ndarray) -> np.ndarray:
    """(N, 8, 8) grey [0, 1] → (N, 3, 8, 8) normalized."""
    rgb = np.repeat(pixels[:, None], 3, axis=1)
    return ((rgb - 0.5) / 0.5).astype(np.float32)


def as_images(pixels: np.ndarray) -> list[np.ndarray]:
    """(N, 8, 8) grey [0, 1] → RGB uint8 (8, 8, 3) images, as a dataset holds them."""
    return [np.repeat((p * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1) for p in pixels]


@functools.lru_cache(maxsize=1)
def trained_digits_net() -> DigitsNet:
    """Trained once per test session (a few seconds on a CPU); test accuracy about 0.98."""
    torch.manual_seed(0)
    train_x, train_y, _, _ = digits_split()
    inputs, labels = torch.from_numpy(to_inputs(train_x)), torch.from_numpy(train_y).long()
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only add contention (measured 8x slower on a busy 2-core machine)
    try:
        for _ in range(12):
            for batch in torch.randperm(len(inputs), generator=generator).split(32):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def digits_adapter() -> TorchAdapter:
    return TorchAdapter(trained_digits_net(), "digits_cnn", DIGITS_CONFIG, labels=CLASS_NAMES)


def held_out_accuracy(model: nn.Module) -> float:
    _, _, test_x, test_y = digits_split()
    with torch.no_grad():
        predicted = model(torch.from_numpy(to_inputs(test_x))).argmax(1).numpy()
    return float((predicted == test_y).mean())


def write_digits_folder(folder: str | os.PathLike, per_class: int | None = None) -> str:
    """The test split as PNGs in class subfolders 0..9 (a labelled dataset
    folder, as `--dataset DIR` reads it)."""
    _, _, test_x, test_y = digits_split()
    counts: dict[int, int] = {}
    for image, label in zip(as_images(test_x), test_y):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, str(label), f"d{label}_{counts[label]:04d}.png"))
    return str(folder)
