"""Inverting a representation (Mahendran & Vedaldi, CVPR 2015, "Understanding
Deep Image Representations by Inverting Them") as a cnnviz plugin.

From noise (the model's mean colour plus Gaussian noise, drawn per item), find
the image x whose representation at a layer matches the input image x0's:

    ‖Φ(x) − Φ(x0)‖² / ‖Φ(x0)‖²  +  λ_α R_α(x)  +  λ_TV R_TV^β(x)

with the paper's α-norm (α = 6) and total variation (β = 2) priors, measured
against the typical pixel size of natural images as the paper balances them
(``image_priors``). What the reconstruction shares with x0 is what the layer
keeps of it.

- Optimizer: Adam, or the paper's gradient descent with momentum 0.9; the
  rate decays geometrically to a tenth over the run. The priors are means over
  pixel positions, so for SGD the rate multiplies H·W times the gradient and
  suits every image size.
- Pixels stay in [0, 1] by projection: clamped after each step (projected
  gradient descent), which leaves the gradient inside the box untouched,
  unlike a sigmoid that flattens it near 0 and 1.
- The forward stops at the layer (``layer_features``): a mid-level layer
  costs less than the whole network.
- Default layer: the model's last-but-one stage (the adapter's ``mid_level_layer``;
  efficientnet_lite0: blocks.4, resnet18: layer3, vgg16: features.22), mid/late
  depth, where the paper's reconstructions still show the layout and the
  objects of the image but no longer its exact colours and textures.

Result: history curves "objective" (lower is better), "feature_distance"
‖Φ(x) − Φ(x0)‖ / ‖Φ(x0)‖, "alpha_norm" and "total_variation", each after every
step; per item the final and starting feature distance (records, and extras
"feature_distance"); the input beside the reconstruction (picture "input").
A class target is not used; a neuron target is refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core.toolkit import frozen_parameters
from cnnviz_core import Capability, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param, validate_targets

from cnnviz_plugins.synthesis.support.image_priors import alpha_norm, total_variation
from cnnviz_core.toolkit import LayerFeatures

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

DEFAULT_LR = {"adam": 0.05, "sgd": 0.002}
MOMENTUM = 0.9  # the paper's momentum
NOISE = 0.1  # std of the starting noise around the model's mean colour
FINAL_LR = 0.1  # the step size decays to this fraction of --lr over the run


@dataclasses.dataclass
class InversionParams(SynthesisParams):
    layer: str | None = param(None, "layer whose representation is inverted (default: the model's last-but-one stage output)")
    steps: int = param(200, "optimization steps", minimum=1)
    optimizer: str = param("adam", "adam, or sgd: the paper's gradient descent with momentum 0.9", choices=("adam", "sgd"))
    lr: float | None = param(None, "step size, decayed to a tenth over the run (default: 0.05 for adam; 0.002 for sgd, per unit of H·W·gradient)", minimum=0.0)
    alpha: float = param(6.0, "exponent α of the α-norm prior (large α keeps pixels in range)", minimum=1.0)
    alpha_weight: float = param(0.05, "weight λ_α of the α-norm prior", minimum=0.0)
    beta: float = param(2.0, "exponent β of the total-variation prior (1: sharp edges, 2: smooth)", minimum=0.5)
    tv_weight: float = param(0.05, "weight λ_TV of the total-variation prior", minimum=0.0)
    batch_size: int | None = param(None, "images inverted at once (default 4); halved on out-of-memory", minimum=1)


class Inversion(SynthesisMethod):
    """Inversion: from noise, the image whose features at a layer match the input's (Mahendran & Vedaldi 2015)."""

    name = "inversion"
    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})
    Params = InversionParams
    needs_image = True
    higher_is_better = False
    batch_hint = 4
    demo_params = {"steps": 40}

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.mid_level_layer()
        self.adapter.check_layer(self.layer)
        self.features = LayerFeatures(self.adapter, [self.layer], self.name)

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"class", "top1"}, self.name, advice="inversion reconstructs an image from its features at --layer; it takes no neuron target")

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        # Channels-last, as the adapter feeds its inputs: the faster convolution kernels.
        return self.to_model(pixels).contiguous(memory_format=torch.channels_last)

    def synthesize(self, images: np.ndarray, targets) -> Synthesis:
        import torch

        p = self.params
        device = self.adapter.device
        b = len(images)
        with frozen_parameters(self.adapter.module):
            _, reference = self.features.reference(self.model_input(torch.from_numpy(images).to(device)))
            wanted = reference[self.layer].float()
            scale = wanted.flatten(1).pow(2).sum(dim=1).clamp_min(1e-12)

            def terms(x: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
                distance = (features.float() - wanted).flatten(1).pow(2).sum(dim=1) / scale
                prior_alpha = alpha_norm(x, p.alpha, self.adapter.config.mean)
                prior_tv = total_variation(x, p.beta)
                objective = distance + p.alpha_weight * prior_alpha + p.tv_weight * prior_tv
                return {"objective": objective, "feature_distance": distance.sqrt(), "alpha_norm": prior_alpha, "total_variation": prior_tv}

            x = self.start(b, device)
            optimizer = self.optimizer(x)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: FINAL_LR ** (step / max(1, p.steps - 1)))
            history = {key: np.zeros((b, p.steps), np.float32) for key in ("objective", "feature_distance", "alpha_norm", "total_variation")}
            with torch.enable_grad():
                current = terms(x, self.features(self.model_input(x))[self.layer])
            start_distance = current["feature_distance"].detach().cpu().numpy()
            for step in range(p.steps):
                optimizer.zero_grad(set_to_none=True)
                current["objective"].sum().backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
                last = step == p.steps - 1
                if last:  # the whole model, for the final image's class
                    with torch.no_grad():
                        logits, outputs = self.features.reference(self.model_input(x))
                        current = terms(x, outputs[self.layer])
                else:
                    with torch.enable_grad():
                        current = terms(x, self.features(self.model_input(x))[self.layer])
                for key in history:
                    history[key][:, step] = current[key].detach().cpu().numpy()
                show = last or step % 10 == 0
                self.step_done(step, x.detach() if show else None, current["objective"].detach() if show else None)
        final = x.detach().float().cpu().numpy()
        probabilities = logits.float().softmax(dim=1)
        distance = history["feature_distance"][:, -1]
        records = [{"layer": self.layer, "feature_distance": float(distance[i]), "feature_distance_start": float(start_distance[i])}
                   for i in range(b)]
        return Synthesis(
            images=final,
            history=history,
            classes=probabilities.argmax(dim=1).cpu().numpy(),
            scores=probabilities.max(dim=1).values.cpu().numpy(),
            pictures={"input": images},
            extras={"feature_distance": distance.copy()},
            records=records,
        )

    def start(self, b: int, device: str) -> torch.Tensor:
        """Noise around the model's mean colour, drawn per item."""
        import torch

        height, width = self.adapter.config.input_size
        mean = torch.tensor(self.adapter.config.mean, dtype=torch.float32).view(3, 1, 1)
        noise = [torch.randn(3, height, width, generator=g) for g in self.generators(b)]
        x = (mean + NOISE * torch.stack(noise)).clamp(0.0, 1.0)
        return x.to(device).requires_grad_(True)

    def optimizer(self, x: torch.Tensor) -> torch.optim.Optimizer:
        import torch

        lr = self.params.lr if self.params.lr is not None else DEFAULT_LR[self.params.optimizer]
        if self.params.optimizer == "sgd":
            # The priors are means over pixel positions, so the gradient shrinks
            # with the image's area; scaled by H·W, one rate suits every size.
            height, width = self.adapter.config.input_size
            return torch.optim.SGD([x], lr=lr * height * width, momentum=MOMENTUM)
        return torch.optim.Adam([x], lr=lr)


@hookimpl
def cnnviz_methods():
    return [Inversion]
