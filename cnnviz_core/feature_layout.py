"""How a layer's output becomes a (B, C, h, w) feature map: the answer to the
adapter contract's :meth:`~cnnviz_core.ModelAdapter.feature_layout`.

A vision transformer's blocks output tokens (B, N, C): a few prefix tokens
(ViT's class token, DeiT's class and distillation tokens) followed by one
token per image patch in raster order; Swin's stages output channels-last
maps (B, h, w, C). A layout turns either into a map (prefix tokens dropped)
and, for a method that makes the map the root of a backward pass, back.
Works on torch tensors and numpy arrays alike."""

from __future__ import annotations

import dataclasses
import math

from .errors import InputError

KINDS = ("tokens", "channels_last")


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """``tokens``: (B, prefix + h·w, C); ``channels_last``: (B, h, w, C).
    ``grid`` is (h, w) at the model's input size."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"feature layout kind must be one of {KINDS}, got {self.kind!r}")

    def to_map(self, output):
        """(B, C, h, w) view of the layer's output (tensor or array), prefix tokens dropped."""
        if self.kind == "channels_last":
            return _permute(output, (0, 3, 1, 2))
        patches = output[:, self.prefix:]
        b, n, c = patches.shape
        h, w = self.grid_for(n)
        return _permute(patches, (0, 2, 1)).reshape(b, c, h, w)

    def from_map(self, feature_map, like):
        """A torch map put back in the layer's own layout, contiguous; the
        prefix tokens are taken from ``like`` (the layer's original output)."""
        import torch

        if self.kind == "channels_last":
            return feature_map.permute(0, 2, 3, 1).contiguous()
        patches = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : self.prefix].to(patches.dtype), patches], dim=1).contiguous()

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The (B, C, h, w) shape of an output of this ``shape``."""
        if self.kind == "channels_last":
            return (shape[0], shape[3], shape[1], shape[2])
        return (shape[0], shape[2], *self.grid_for(shape[1] - self.prefix))

    def describe(self) -> str:
        if self.kind == "channels_last":
            return "channels-last map"
        return f"tokens, {self.prefix} prefix dropped" if self.prefix else "tokens"

    def grid_for(self, patches: int) -> tuple[int, int]:
        """The grid of ``patches`` tokens: the model's own, or a square one
        for a dynamic-size model run at another square size."""
        if patches == self.grid[0] * self.grid[1]:
            return self.grid
        side = math.isqrt(max(patches, 0))
        if side * side == patches and side > 0:
            return (side, side)
        raise InputError(
            f"a token layer holds {patches} patch tokens, which is neither the {self.grid[0]} x {self.grid[1]} grid "
            "of the model's input size nor a square grid: give inputs of the model's input size"
        )


def _permute(value, order):
    permute = getattr(value, "permute", None)
    return permute(*order) if permute is not None else value.transpose(order)
