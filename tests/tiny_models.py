"""Small networks with known weights, for hand-checked expectations."""

from __future__ import annotations

import torch
from torch import nn


class TinyCamNet(nn.Module):
    """conv 1x1 (3→2, stride 2) → ReLU → global average pool → linear (2→3).

    Its Grad-CAM has a closed form: ∂y_c/∂A_k = w_ck / (h·w) everywhere, so
    α_k = w_ck / (h·w)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, kernel_size=1, stride=2, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3, bias=True)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class LinearNet(nn.Module):
    """score_c = Σ W_c · x + b_c: occlusion drops are sums of W·(x − baseline)."""

    def __init__(self, height: int = 4, width: int = 4, classes: int = 2, seed: int = 0, weight=None):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * height * width, classes)
        with torch.no_grad():
            if weight is None:
                weight = torch.randn(self.fc.weight.shape, generator=generator)
            self.fc.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(self.fc.weight.shape))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


class SmallConvNet(nn.Module):
    """A small CNN with the usual layer types (conv, batch norm, ReLU, pooling,
    linear head), seeded; for conformance runs on torch and ONNX."""

    def __init__(self, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU6(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        self.fail = False  # set to make forward raise after the features

    def forward(self, x):
        features = self.features(x)
        if self.fail:
            raise RuntimeError("injected failure after the feature layers")
        return self.fc(self.pool(features).flatten(1))


class TwoLayerNet(nn.Module):
    """1x1 conv (3→2) picking (r, g) → activation → 1x1 conv (2→2) → spatial sum.

    logit_c = Σ_pixels Σ_k W2[c, k] · act(z_k), z = (r, g). Gradients through it
    are written out by hand in the tests."""

    W2 = ((1.0, -1.0), (-2.0, 3.0))

    def __init__(self, activation: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1, bias=False)
        self.act = activation if activation is not None else nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
            self.conv2.weight.copy_(torch.tensor(self.W2).view(2, 2, 1, 1))

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x))).sum(dim=(2, 3))


class FunctionalReluNet(TwoLayerNet):
    """The same network with the ReLU called functionally: it cannot be guided."""

    def forward(self, x):
        return self.conv2(torch.nn.functional.relu(self.conv1(x))).sum(dim=(2, 3))
