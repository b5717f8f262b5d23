"""Neural style transfer (Gatys, Ecker & Bethge, CVPR 2016, "Image Style
Transfer Using Convolutional Neural Networks") as a cnnviz plugin.

The input image gives the content, ``--style`` the style. The image x
minimizes

    w_c · L_content + w_s · L_style + w_tv · R_TV(x)

- L_content = ‖F(x) − F(c)‖² / ‖F(c)‖² at the content layer;
- L_style = the mean over the style layers of ‖G(x) − G(s)‖² / ‖G(s)‖², with
  G = F Fᵀ / (C·H·W) the Gram matrix of a layer's (C, H·W) feature map,
  normalized by its number of elements;
- R_TV the total variation with β = 2 of ``image_priors`` (a few units on a photo).

Each term is relative to its target's size, so every style layer counts the
same whatever its activation scale, and the weights carry over from one model
to another (Gatys et al. weigh raw sums with per-layer constants fitted to VGG).

Default layers come from the model's stages (the adapter's ``stage_outputs``): the style
from every stage output, as Gatys et al. take one layer per VGG block, and the
content from the last-but-one stage, as their conv4_2
(efficientnet_lite0: style blocks.0, .1, .2, .4, .6, content blocks.4;
resnet18: act1, layer1 … layer4 and layer3; vgg16: features.3, .8, .15, .22,
.29 and features.22).

- Optimizer: L-BFGS as in the paper (per item, ``batched_lbfgs``), or Adam.
  Pixels stay in [0, 1] by projection after each step.
- Start: the content image (default; the content loss starts at 0) or white
  noise drawn per item.
- The forward stops after the deepest of the layers (``layer_features``).
- Style image (``style_image``): a file, ``skimage:NAME`` (a photograph bundled
  with scikit-image, offline: what ``cnnviz demo`` uses), or from Python a PIL
  image or an array; resized to the model's input size; checked before any work.

Result: history curves "objective" (lower is better), "content_loss",
"style_loss" and "tv_loss" after every step; per item the starting values and
the style loss's reduction factor (records); pictures "content" and "style".
A class target is not used; a neuron target is refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cnnviz_core import Capability, InputError, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param, validate_targets
from cnnviz_core.toolkit import LayerFeatures, frozen_parameters
from cnnviz_plugins.synthesis.support.batched_lbfgs import BatchedLBFGS
from cnnviz_plugins.synthesis.support.image_priors import total_variation
from cnnviz_plugins.synthesis.support.style_image import checked_style, style_pixels

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.03}
TV_BETA = 2.0
CURVES = ("objective", "content_loss", "style_loss", "tv_loss")


@dataclasses.dataclass
class StyleTransferParams(SynthesisParams):
    style: str = param("", "style image: a file, or skimage:NAME for a scikit-image sample (offline), e.g. skimage:immunohistochemistry; "
                           "the Python API also takes a PIL image or an array",
                   python_types=(Image.Image, np.ndarray))
    content_layer: str | None = param(None, "layer whose features keep the content (default: the last-but-one stage output)")
    style_layers: str | None = param(None, "comma-separated layers whose Gram matrices carry the style (default: every stage output)",
                                     python_types=(list, tuple))
    content_weight: float = param(1.0, "weight of the content loss", minimum=0.0)
    style_weight: float = param(10.0, "weight of the style loss", minimum=0.0)
    tv_weight: float = param(0.1, "weight of the total-variation prior", minimum=0.0)
    optimizer: str = param("lbfgs", "lbfgs (the paper's) or adam", choices=("lbfgs", "adam"))
    steps: int = param(100, "optimization steps (L-BFGS iterations)", minimum=1)
    lr: float | None = param(None, "step size (default: 1 for lbfgs, the first try of its line search; 0.03 for adam)", minimum=0.0)
    init: str = param("content", "start from the content image or from noise", choices=("content", "noise"))
    batch_size: int | None = param(None, "content images styled at once (default 4); halved on out-of-memory", minimum=1)


class StyleTransfer(SynthesisMethod):
    """Style transfer: the input's content painted in the style image's textures (Gatys et al. 2016)."""

    name = "style_transfer"
    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})
    Params = StyleTransferParams
    needs_image = True
    higher_is_better = False
    batch_hint = 4
    # In a demo's 25 steps Adam moves visibly further from the photo than L-BFGS,
    # which needs a few hundred to paint; the stronger TV keeps Adam's strokes smooth.
    demo_params = {"style": "skimage:immunohistochemistry", "optimizer": "adam", "tv_weight": 1.0, "steps": 20}  # the demo's time budget

    @classmethod
    def check_params(cls, params) -> None:
        params.style = checked_style(params.style, cls.name)
        if isinstance(params.style_layers, (list, tuple)):  # the Python API may pass a list
            params.style_layers = ",".join(params.style_layers)
        if params.style_layers is not None and not [name for name in params.style_layers.split(",") if name.strip()]:
            raise InputError("style_transfer: --style-layers names no layer; give comma-separated layer names")

    def setup(self) -> None:
        import torch

        p = self.params
        stages = self.adapter.stage_outputs() if p.style_layers is None else []
        self.content_layer = p.content_layer or self.adapter.mid_level_layer()
        self.style_layers = [name.strip() for name in p.style_layers.split(",") if name.strip()] if p.style_layers else stages
        for name in [self.content_layer, *self.style_layers]:
            self.adapter.check_layer(name)
        self.features = LayerFeatures(self.adapter, [self.content_layer, *self.style_layers], self.name)
        style = torch.from_numpy(style_pixels(checked_style(p.style, self.name), self.adapter.config, self.name))[None].to(self.adapter.device)
        with frozen_parameters(self.adapter.module):
            _, outputs = self.features.reference(self.model_input(style))
        for name in self.style_layers:
            if outputs[name].dim() != 4:
                raise InputError(f"style_transfer: style layer {name!r} outputs shape {tuple(outputs[name].shape)}; "
                                 "Gram matrices need a (B, C, H, W) feature map")
        self.style_image = style
        self.style_grams = {name: gram(outputs[name]) for name in self.style_layers}

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"class", "top1"}, self.name, advice="style_transfer restyles the input image; it takes no neuron target")

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        # Channels-last, as the adapter feeds its inputs: the faster convolution kernels.
        return self.to_model(pixels).contiguous(memory_format=torch.channels_last)

    def synthesize(self, images: np.ndarray, targets) -> Synthesis:
        import torch

        p = self.params
        device = self.adapter.device
        b = len(images)
        content = torch.from_numpy(images).to(device)
        with frozen_parameters(self.adapter.module):
            _, outputs = self.features.reference(self.model_input(content))
            wanted = outputs[self.content_layer].float()
            content_scale = wanted.flatten(1).pow(2).sum(dim=1).clamp_min(1e-12)
            style_scales = {name: g.pow(2).sum().clamp_min(1e-12) for name, g in self.style_grams.items()}

            def objective(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                features = self.features(self.model_input(x))
                content_loss = (features[self.content_layer].float() - wanted).flatten(1).pow(2).sum(dim=1) / content_scale
                style_loss = sum(
                    (gram(features[name]) - self.style_grams[name]).flatten(1).pow(2).sum(dim=1) / style_scales[name]
                    for name in self.style_layers
                ) / len(self.style_layers)
                tv_loss = total_variation(x, TV_BETA)
                total = p.content_weight * content_loss + p.style_weight * style_loss + p.tv_weight * tv_loss
                return total, {"objective": total, "content_loss": content_loss, "style_loss": style_loss, "tv_loss": tv_loss}

            start = content.clone() if p.init == "content" else self.noise(b, device)
            history = {key: np.zeros((b, p.steps), np.float32) for key in CURVES}
            run = self.lbfgs if p.optimizer == "lbfgs" else self.adam
            final, first = run(start, objective, history)
            with torch.no_grad():
                logits = self.adapter.module(self.model_input(final))
        probabilities = logits.float().softmax(dim=1)
        ratio = first["style_loss"] / np.maximum(history["style_loss"][:, -1], 1e-30)
        records = [{"content_layer": self.content_layer, "style_layers": list(self.style_layers),
                    **{f"{key}_start": float(first[key][i]) for key in CURVES},
                    "style_loss_reduction": float(ratio[i])} for i in range(b)]
        style = self.style_image.cpu().numpy().repeat(b, axis=0)
        return Synthesis(
            images=final.cpu().numpy(),
            history=history,
            classes=probabilities.argmax(dim=1).cpu().numpy(),
            scores=probabilities.max(dim=1).values.cpu().numpy(),
            pictures={"content": images, "style": style},
            records=records,
        )

    def lbfgs(self, start, objective, history):
        solver = BatchedLBFGS(start, objective, lr=self.lr(), project=lambda x: x.clamp(0.0, 1.0))
        first = {key: value.cpu().numpy() for key, value in solver.details.items()}
        for step in range(self.params.steps):
            solver.step()
            self._record(step, solver.point, solver.details, history)
        return solver.point.detach(), first

    def adam(self, start, objective, history):
        import torch

        x = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr())
        with torch.enable_grad():
            total, details = objective(x)
        first = {key: value.detach().cpu().numpy() for key, value in details.items()}
        for step in range(self.params.steps):
            optimizer.zero_grad(set_to_none=True)
            total.sum().backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            with torch.enable_grad():
                total, details = objective(x)
            self._record(step, x.detach(), details, history)
        return x.detach(), first

    def _record(self, step, x, details, history) -> None:
        for key in CURVES:
            history[key][:, step] = details[key].detach().cpu().numpy()
        show = step == self.params.steps - 1 or step % 10 == 0
        self.step_done(step, x if show else None, details["objective"].detach() if show else None)

    def lr(self) -> float:
        return self.params.lr if self.params.lr is not None else DEFAULT_LR[self.params.optimizer]

    def noise(self, b: int, device: str) -> torch.Tensor:
        """White noise in [0, 1], drawn per item (the paper's other start)."""
        import torch

        height, width = self.adapter.config.input_size
        return torch.stack([torch.rand(3, height, width, generator=g) for g in self.generators(b)]).to(device)


def gram(features: torch.Tensor) -> torch.Tensor:
    """(b, C, H, W) → (b, C, C) Gram matrices F Fᵀ / (C·H·W)."""
    b, channels, height, width = features.shape
    flat = features.float().reshape(b, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


@hookimpl
def cnnviz_methods():
    return [StyleTransfer]
