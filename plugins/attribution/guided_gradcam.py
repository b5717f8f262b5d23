"""Guided Grad-CAM (Selvaraju et al. 2017) as a cnnviz plugin."""

from __future__ import annotations

import numpy as np

from cnnviz_core import Attribution, Capability, Target, hookimpl
from cnnviz_core.toolkit import CAMParams, GradientCAM, InputGradient


class GuidedGradCAM(InputGradient):
    """Guided Grad-CAM: guided backprop multiplied pixel-wise by the upsampled Grad-CAM map."""

    name = "guided_gradcam"
    requires = frozenset({Capability.GRADIENTS, Capability.ACTIVATIONS})
    Params = CAMParams
    accepts = frozenset({"class", "top1"})
    rule = "guided"

    def setup(self) -> None:
        # The toolkit's GradientCAM with its default channel weights is Grad-CAM.
        self.gradcam = GradientCAM(self.adapter, self.params, self.scheduler)
        self.gradcam.name = self.name  # its errors name this method
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
