"""Attention rollout (Abnar & Zuidema 2020) as a cnnviz plugin: how much each
image patch flows into the class token through every attention layer of a
vision transformer.

Per layer the heads' attention probabilities are fused (mean, max or min),
optionally the weakest ``discard_ratio`` of them are zeroed (the filtering of
common implementations, 0 = the paper), the residual connection is added as
the identity, Â = ½(A + I), and the rows are renormalized to sum to one. The
rollout is the product Â_L ⋯ Â_1; its class-token row over the patch tokens
(the mean row for a model without prefix tokens) is reshaped to the patch grid
and upsampled bilinearly. The probabilities are read by the toolkit's
:func:`~cnnviz_core.toolkit.attention_probabilities` (a hook on each block's
``attn_drop``, timm's fused attention switched off for the run and restored).

The map does not depend on the target: rollout explains what the class token
attends to, not a class; the target only picks the score reported with it."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, InputError, hookimpl, param
from cnnviz_core import resolve_classes, select_scores
from cnnviz_core.toolkit import attention_modules, attention_probabilities

FUSIONS = ("mean", "max", "min")


@dataclasses.dataclass
class AttentionRolloutParams(AttributionParams):
    head_fusion: str = param("mean", "how the heads of a layer are fused", choices=FUSIONS)
    discard_ratio: float = param(
        0.0, "fraction of each fused attention matrix's weakest entries set to zero before rollout "
        "(0 = Abnar & Zuidema; 0.9 is common for sharper maps); the class token's attention to itself is kept",
        minimum=0.0,
    )


class AttentionRollout(AttributionMethod):
    """Attention rollout: the class token's row of Π_l ½(A_l + I) (rows renormalized) over the patch grid, upsampled.

    ``extras["layer_map"]`` keeps the map on the patch grid. Needs a model
    with global attention blocks (ViT, DeiT and their kin); models without
    attention, and windowed attention (Swin), are refused."""

    name = "attention_rollout"
    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})  # reads the torch module's attention blocks
    Params = AttentionRolloutParams
    batch_hint = 16

    @classmethod
    def check_params(cls, params) -> None:
        if not 0.0 <= params.discard_ratio < 1.0:
            raise InputError(f"attention_rollout: --discard-ratio must be in [0, 1), got {params.discard_ratio}")

    @classmethod
    def unsupported(cls, adapter) -> str | None:
        blocks = attention_modules(adapter.module) if hasattr(adapter, "module") else {}
        if not blocks:
            return (f"model {adapter.name!r} has no attention blocks whose probabilities can be read (modules with "
                    "num_heads and attn_drop, as timm's transformers have); rollout needs a vision transformer — "
                    "use gradcam or occlusion on this model")
        first, block = next(iter(blocks.items()))
        if getattr(block, "window_size", None) is not None:
            return (f"attention block {first!r} attends within windows (Swin-style windowed attention), so rolling "
                    "its attention out does not give a map of the image; use gradcam on this model")
        return None

    def setup(self) -> None:
        reason = self.unsupported(self.adapter)
        if reason:
            raise self.error(reason)
        self.blocks = attention_modules(self.adapter.module)
        first = next(iter(self.blocks))
        self.layout = self.adapter.feature_layout(first)
        if self.layout is None or self.layout.kind != "tokens":
            raise self.error(
                f"the output of attention block {first!r} is not a sequence of patch tokens on a grid the model "
                "reports (no patch embedding with a grid found); rollout needs a ViT-style token sequence"
            )

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        import torch
        import torch.nn.functional as F

        with attention_probabilities(self.blocks) as probabilities, torch.inference_mode():
            logits = self.adapter.module(self.adapter.tensor(inputs)).float()
        logits = logits.cpu().numpy()
        rollout = None
        for name in self.blocks:
            fused = self._fused(name, probabilities.get(name), len(inputs))
            rollout = fused if rollout is None else fused @ rollout
        prefix = self.layout.prefix
        rows = rollout[:, 0, prefix:] if prefix else rollout.mean(dim=1)
        grid = self.layout.grid_for(rows.shape[1])
        layer_map = rows.reshape(len(inputs), 1, *grid).float()
        maps = F.interpolate(layer_map, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        classes = resolve_classes(targets, logits)
        return Attribution(
            maps=maps.cpu().numpy(),
            classes=classes,
            scores=select_scores(logits, classes, self.params.score),
            extras={"layer_map": layer_map[:, 0].cpu().numpy()},
        )

    def _fused(self, name: str, attention, batch: int):
        """One layer's ½(fused A + I), rows renormalized, in float64."""
        import torch

        if attention is None:
            raise self.error(f"attention block {name!r} did not run in the forward pass")
        if attention.dim() != 4 or attention.shape[0] != batch or attention.shape[-1] != attention.shape[-2]:
            raise self.error(
                f"attention block {name!r} gives probabilities of shape {tuple(attention.shape)}, not "
                f"({batch}, heads, N, N) over the whole image: windowed attention (Swin) attends within windows, "
                "so its rollout is not a map of the image; use gradcam on this model"
            )
        attention = attention.double()
        fused = {"mean": attention.mean(dim=1), "max": attention.amax(dim=1), "min": attention.amin(dim=1)}[self.params.head_fusion]
        if self.params.discard_ratio > 0:
            fused = self._discarded(fused)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = 0.5 * (fused + eye)
        return fused / fused.sum(dim=-1, keepdim=True)

    def _discarded(self, fused):
        """The weakest ``discard_ratio`` of each item's entries set to zero,
        the class token's attention to itself (entry 0, 0) excepted."""
        flat = fused.reshape(len(fused), -1).clone()
        count = int(flat.shape[1] * self.params.discard_ratio)
        if count:
            weakest = flat.topk(count, dim=1, largest=False).indices
            keep = flat[:, 0].clone()
            flat.scatter_(1, weakest, 0.0)
            flat[:, 0] = keep
        return flat.reshape(fused.shape)


@hookimpl
def cnnviz_methods():
    return [AttentionRollout]
