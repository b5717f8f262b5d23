"""Guided Grad-CAM (Selvaraju et al. 2017) as a cnnviz plugin."""

from __future__ import annotations

import numpy as np

from cnnviz_core import Attribution, Capability, hookimpl
from cnnviz_core.targets import Target

from cnnviz_core.toolkit.gradient_cam import CAMParams
from cnnviz_plugins.attribution.gradcam import GradCAM
from cnnviz_core.toolkit.input_gradient import InputGradient


class GuidedGradCAM(InputGradient):
    """Guided Grad-CAM: guided backprop multiplied pixel-wise by the upsampled Grad-CAM map."""

    name = "guided_gradcam"
    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})
    Params = CAMParams
    accepts_neurons = False
    rule = "guided"

    def setup(self) -> None:
        self.gradcam = GradCAM(self.adapter, GradCAM.make_params(layer=self.params.layer, score=self.params.score), self.scheduler)
        self.gradcam.setup()

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        cam = self.gradcam.attribute(inputs, targets)
        # the guided pass explains the class Grad-CAM resolved (top-1 included)
        fixed = [Target("class", class_index=int(c)) for c in cam.classes]
        guided, _, _ = self.input_gradients(inputs, fixed)
        images = guided * cam.maps[:, None]
        return Attribution(
            maps=self.maps_from(images, inputs), classes=cam.classes, scores=cam.scores, images=images,
            extras={"gradcam": cam.maps, "guided_backprop": guided},
        )


@hookimpl
def cnnviz_methods():
    return [GuidedGradCAM]
