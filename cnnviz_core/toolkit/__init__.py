"""Public toolkit for methods on torch models (adapters with the ``gradients``
capability): hooks that always detach, score selection, the gradient-CAM and
input-gradient base classes with their backward rules, and feature capture
that stops the forward after the deepest layer read.

Importing it imports torch; ``import cnnviz_core`` alone does not.
"""

from .backward_rules import RuleReport, backward_rule
from .gradient_cam import CAMParams, GradientCAM, class_scores
from .hooks import capture_outputs, eval_mode, forward_hooks, frozen_parameters, gradient_root, hook_count
from .input_gradient import GradientParams, InputGradient
from .layer_features import LayerFeatures

__all__ = [
    "CAMParams", "GradientCAM", "GradientParams", "InputGradient", "LayerFeatures", "RuleReport",
    "backward_rule", "capture_outputs", "class_scores", "eval_mode", "forward_hooks", "frozen_parameters",
    "gradient_root", "hook_count",
]
