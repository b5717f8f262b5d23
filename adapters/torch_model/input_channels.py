"""Models whose first convolution does not take 3 channels (timm's
``in_chans``). cnnviz hands a model a normalized RGB batch (B, 3, H, W); a
one-channel model gets the luminance of it (ITU-R BT.601 weights), normalized
with the luminance of the model's mean and std — so a grey image reaches it as
its own grey values. Other channel counts are refused at load, saying why."""

from __future__ import annotations

import torch
from torch import nn

from cnnviz_core.errors import ModelLoadError

from .output_select import Adopting

LUMA = (0.299, 0.587, 0.114)


def input_channels(module: nn.Module) -> int | None:
    """The channels the model's first convolution reads (None without one)."""
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


class GreyInput(Adopting):
    """Runs the model on the luminance of a normalized RGB batch."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__(model)
        luma = torch.tensor(LUMA)
        self.luma = tuple(float(v) for v in LUMA)
        self.rgb_mean = tuple(float(v) for v in mean)
        self.rgb_std = tuple(float(v) for v in std)
        self.grey_mean = float(luma @ torch.tensor(self.rgb_mean))
        self.grey_std = float(luma @ torch.tensor(self.rgb_std))

    def forward(self, x):
        shape = (1, 3, 1, 1)
        pixels = x * x.new_tensor(self.rgb_std).view(shape) + x.new_tensor(self.rgb_mean).view(shape)
        grey = (pixels * x.new_tensor(self.luma).view(shape)).sum(dim=1, keepdim=True)
        return self._model((grey - self.grey_mean) / self.grey_std)

    def extra_repr(self) -> str:
        return f"{type(self._model).__name__}, fed the luminance of RGB inputs"


def fitted(module: nn.Module, config, name: str) -> nn.Module:
    """The module as cnnviz runs it: itself for RGB models, fed grey for
    one-channel models; ModelLoadError for other channel counts."""
    channels = input_channels(module)
    if channels in (None, 3):
        return module
    if channels == 1:
        return GreyInput(module, config.mean, config.std)
    raise ModelLoadError(f"model {name!r} takes {channels}-channel inputs (its first convolution reads {channels} channels); "
                         "cnnviz feeds RGB images (B, 3, H, W) and one-channel models their luminance. Wrap it in a module "
                         f"that makes its {channels} channels from RGB (e.g. RGB plus a constant alpha plane) and load that")
