"""Public toolkit for methods on torch models (adapters with the ``gradients``
or ``activations`` capability, where ``adapter.module`` is an ``nn.Module``).

A built-in method imports exactly what a third party's may: the names of
``cnnviz_core`` and of this package. What is here:

Hooks and temporary model changes that always undo themselves
    :func:`forward_hooks`, :func:`capture_outputs` (a layer's output by name),
    :func:`gradient_root` (a backward that stops at a layer),
    :func:`frozen_parameters`, :func:`eval_mode`, :func:`hook_count` (leak checks).
Score selection (one meaning per target, see ``cnnviz_core.targets``)
    :func:`class_scores` (a class's logit or probability, differentiable),
    :func:`neuron_score` (``layer:channel``: the channel's spatial mean;
    ``layer:channel@y,x``: one unit), :func:`target_scores` (both, per input),
    :func:`explained_scores` (every target kind, callable / multilabel /
    region / detection included, from the model's whole output).
Base classes: override one step
    :class:`GradientCAM` (Grad-CAM's pipeline; override ``cam_weights``) with
    :class:`CAMParams`; :class:`InputGradient` (∂score/∂input; set ``rule`` or
    override ``maps_from``) with :class:`GradientParams`; :func:`backward_rule`
    (guided / deconvnet ReLU backward) and its :class:`RuleReport`.
Attention (transformers)
    :func:`attention_modules` (the blocks whose probabilities can be read),
    :func:`attention_probabilities` (record them; fused attention off),
    :func:`unfused_attention`.
Features and images
    :func:`read_layers` (layers' outputs from a forward that stops after the
    deepest one), :class:`LayerFeatures` (the same, checked once per model),
    :func:`gaussian_blur` (tensors or arrays).

Example, HiResCAM (Draelos & Carin 2020) in full::

    from cnnviz_core import hookimpl
    from cnnviz_core.toolkit import GradientCAM

    class HiResCAM(GradientCAM):
        \"\"\"HiResCAM: ReLU(Σ_k ∂score/∂A_k ⊙ A_k), upsampled.\"\"\"
        name = "hirescam"

        def cam_weights(self, activations, gradients):
            return gradients  # per position: no averaging

    @hookimpl
    def cnnviz_methods():
        return [HiResCAM]

Importing this package imports no torch: each name loads its module on first
use (PEP 562), and the modules import torch inside the functions that run on a
model, so a plugin that subclasses :class:`GradientCAM` or :class:`InputGradient`
lists its methods without torch. Only :mod:`.backward_rules` (guided and
deconvnet backward passes, whose tables and autograd function are built from
torch types) imports torch when it loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name → the submodule that defines it
_SOURCES = {
    "RuleReport": "backward_rules", "backward_rule": "backward_rules",
    "attention_modules": "attention", "attention_probabilities": "attention", "unfused_attention": "attention",
    "gaussian_blur": "blur",
    "CAMParams": "gradient_cam", "GradientCAM": "gradient_cam",
    "capture_outputs": "hooks", "eval_mode": "hooks", "forward_hooks": "hooks", "frozen_parameters": "hooks",
    "gradient_root": "hooks", "hook_count": "hooks",
    "GradientParams": "input_gradient", "InputGradient": "input_gradient",
    "LayerFeatures": "layer_features", "read_layers": "layer_features",
    "class_scores": "scores", "neuron_score": "scores", "target_scores": "scores",
    "explained_scores": "scores", "region_score": "scores", "detection_score": "scores", "detections_of": "scores",
    "box_iou": "scores", "segmentation_logits": "scores",
}

__all__ = [
    "CAMParams", "GradientCAM", "GradientParams", "InputGradient", "LayerFeatures", "RuleReport",
    "attention_modules", "attention_probabilities", "backward_rule", "capture_outputs", "class_scores", "eval_mode", "forward_hooks", "frozen_parameters",
    "gaussian_blur", "gradient_root", "hook_count", "neuron_score", "read_layers", "target_scores", "unfused_attention",
    "box_iou", "detection_score", "detections_of", "explained_scores", "region_score", "segmentation_logits",
]


def __getattr__(name: str):
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


if TYPE_CHECKING:  # for type checkers and IDEs: the names, eagerly
    from .attention import attention_modules, attention_probabilities, unfused_attention
    from .backward_rules import RuleReport, backward_rule
    from .blur import gaussian_blur
    from .gradient_cam import CAMParams, GradientCAM
    from .hooks import capture_outputs, eval_mode, forward_hooks, frozen_parameters, gradient_root, hook_count
    from .input_gradient import GradientParams, InputGradient
    from .layer_features import LayerFeatures, read_layers
    from .scores import class_scores, neuron_score, target_scores
    from .scores import box_iou, detection_score, detections_of, explained_scores, region_score, segmentation_logits
