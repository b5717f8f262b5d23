"""Score-CAM (Wang et al., CVPR-W 2020) as a cnnviz plugin. It needs a layer's
activations and forward passes, no gradients, so it runs on ONNX models too.

Each channel A_k of the layer, upsampled bilinearly to the input and min-max
scaled to [0, 1], masks the input: H_k = s(Up(A_k)), masked input
X_b + H_k ∘ (X − X_b), which is the paper's X ∘ H_k for the default baseline
X_b = 0 (the dataset mean in the model's normalized input space). Its channel-wise
increase of confidence is C_k = f(masked_k) − f(X_b), f the explained score
(``--score``: the target's logit by default, as in the paper's Algorithm 1, or
its softmax probability); the weights are α = softmax over channels of C; the
map is ReLU(Σ_k α_k A_k), upsampled bilinearly, raw.

Score conventions elsewhere: pytorch-grad-cam's ScoreCAM takes the softmax over
channels of its target's output on the masked inputs (the logit with its
default ClassifierOutputTarget, the probability with ClassifierOutputSoftmaxTarget),
without the baseline term; that term is the same for every channel, so its
weights equal ours for the same score. (It upsamples the masks with
align_corners=True; cnnviz, like the paper's code, with align_corners=False.)
The authors' repository instead weights each map by the masked input's class
probability itself, with no softmax over channels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, InputError, hookimpl, param, resolve_classes, select_scores

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

# A channel whose values spread less than this fraction of its magnitude is
# constant: float noise (from interpolation, or between runtimes) must not be
# stretched into a full [0, 1] mask.
CONSTANT_SPREAD = 1e-6


@dataclasses.dataclass
class ScoreCAMParams(AttributionParams):
    score: str = param(
        "logit",
        "the score explained, f in the gains C_k = f(masked_k) - f(X_b) whose softmax over channels weights the maps: "
        "the target's logit (the paper's Algorithm 1) or its softmax probability",
        choices=("logit", "prob"),
    )
    layer: str | None = param(None, "layer whose feature maps become the masks (default: the model's last spatial feature layer)")
    baseline: float = param(
        0.0, "the baseline input X_b, and what a mask's zeros fade to, in the model's normalized input space (0 = the dataset mean, as in the paper)"
    )
    channels: int | None = param(
        None,
        "score only the N channels of largest spatial variance per image (Faster Score-CAM); the others get weight 0 "
        "(default: every channel, the exact method)",
        minimum=1,
    )
    batch_size: int | None = param(None, "masked copies per forward pass (default 64); halved on out-of-memory", minimum=1)


def constant_channels(activations: np.ndarray) -> np.ndarray:
    """(K, h, w) → (K,) bool: channels whose mask is all zeros."""
    flat = activations.reshape(len(activations), -1)
    spread = flat.max(axis=1) - flat.min(axis=1)
    return spread <= CONSTANT_SPREAD * np.abs(flat).max(axis=1)


def normalized_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """s(Up(A)): each (h, w) map upsampled bilinearly to ``size`` and scaled to
    [0, 1] by its own minimum and maximum. (n, h, w) → (n, H, W)."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    spread = up.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(spread > 0, (up - low) / torch.where(spread > 0, spread, 1.0), 0.0)


class ScoreCAM(AttributionMethod):
    """Score-CAM: ReLU(Σ_k α_k A_k), α = softmax over channels of the score gained by masking the input with each upsampled map."""

    name = "score_cam"
    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})
    Params = ScoreCAMParams
    batch_hint = 64
    # The default layer of efficientnet_lite0 has 1280 channels (about half of
    # them constant on the sample photos: those cost no forward). The demo scores
    # the 256 of largest variance; on chelsea and coffee that map correlates
    # 0.99999 with the full one.
    demo_params = {"channels": 128}  # the most varied 128 of 320 on lite0: the demo's time budget

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.default_layer()
        self._baseline_logits: dict[tuple[int, int], np.ndarray] = {}
        # The baseline's forward pass also checks the layer (an unknown name
        # raises LayerNotFoundError) and its shape, before any image is run.
        self.baseline_logits(tuple(self.adapter.config.input_size))

    def batch_size(self) -> int:
        return 1  # images one at a time; the masked copies of each are batched below

    def baseline_logits(self, size: tuple[int, int]) -> np.ndarray:
        """The logits of the baseline input X_b at this input size (one row)."""
        if size not in self._baseline_logits:
            baseline = np.full((1, 3, *size), self.params.baseline, dtype=np.float32)
            logits, outputs = self.adapter.logits_and_activations(baseline, [self.layer])
            self.feature_maps(outputs[self.layer])
            self._baseline_logits[size] = logits
        return self._baseline_logits[size]

    def feature_maps(self, output: np.ndarray) -> np.ndarray:
        if output.ndim != 4:
            raise InputError(
                f"score_cam: layer {self.layer!r} outputs shape {tuple(output.shape)}; a (B, C, H, W) feature map is "
                "needed: pick a convolutional layer (`cnnviz models --layers MODEL` lists them)"
            )
        return np.asarray(output, dtype=np.float32)

    def scored_channels(self, activations: np.ndarray) -> np.ndarray:
        """The channels that take part in the softmax, in channel order: all, or
        the ``channels`` of largest spatial variance."""
        count = len(activations)
        if self.params.channels is None or self.params.channels >= count:
            return np.arange(count)
        variance = activations.reshape(count, -1).var(axis=1)
        return np.sort(np.argsort(-variance, kind="stable")[: self.params.channels])

    def channel_weights(self, image: np.ndarray, activations: np.ndarray, cls: int, base: float) -> tuple[np.ndarray, np.ndarray]:
        """One image's weights α (K,) and gains C (K,; NaN where not scored):
        a masked copy per scored, non-constant channel, batched."""
        import torch

        p = self.params
        count = len(activations)
        weights, gains = np.zeros(count), np.full(count, np.nan)
        scored = self.scored_channels(activations)
        constant = constant_channels(activations[scored])
        # A constant channel's mask is all zeros: its masked input is X_b itself, no forward needed.
        gains[scored[constant]] = 0.0
        varying = scored[~constant]
        maps = torch.from_numpy(activations[varying])
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))

        def masked_scores(start: int, stop: int) -> np.ndarray:
            masks = normalized_masks(maps[start:stop], tuple(image.shape[-2:]))[:, None]  # (n, 1, H, W)
            batch = p.baseline + masks * (image_t - p.baseline)
            return select_scores(self.adapter.logits(batch.numpy()), np.full(stop - start, cls), p.score)

        parts = self.scheduler.map_batches(masked_scores, len(varying), p.batch_size or self.batch_hint, desc="score_cam masks")
        if parts:
            gains[varying] = np.concatenate(parts).astype(np.float64) - base
        shifted = gains[scored] - gains[scored].max()  # softmax over the scored channels
        weights[scored] = np.exp(shifted) / np.exp(shifted).sum()
        return weights, gains

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        import torch
        import torch.nn.functional as F

        size = tuple(inputs.shape[-2:])
        logits, outputs = self.adapter.logits_and_activations(inputs, [self.layer])
        activations = self.feature_maps(outputs[self.layer])
        classes = resolve_classes(targets, logits)
        base = select_scores(np.repeat(self.baseline_logits(size), len(inputs), axis=0), classes, self.params.score)
        weights, gains = zip(*(
            self.channel_weights(image, maps, cls, float(score)) for image, maps, cls, score in zip(inputs, activations, classes, base)
        ))
        weights, gains = np.stack(weights), np.stack(gains)
        features = torch.from_numpy(activations).double()
        layer_map = torch.relu(torch.einsum("bk,bkhw->bhw", torch.from_numpy(weights), features)).float()
        cam = F.interpolate(layer_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return Attribution(
            maps=cam.numpy(),
            classes=classes,
            scores=select_scores(logits, classes, self.params.score),
            extras={
                "layer_map": layer_map.numpy(),  # before upsampling
                "channel_weights": weights.astype(np.float32),  # α
                "channel_gains": gains.astype(np.float32),  # C_k = f(masked_k) − f(X_b)
            },
        )


@hookimpl
def cnnviz_methods():
    return [ScoreCAM]
