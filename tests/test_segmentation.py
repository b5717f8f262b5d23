"""Region targets on segmentation models (Seg-Grad-CAM, Vinogradova et al.
2020): the class's logits summed over a box or mask, checked by hand on a
colour-segmenting net and run on torchvision's DeepLabV3 and FCN (random
initialization, 32 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_core
from cnnviz_core import Target, TargetError
from cnnviz_core.toolkit import region_score
from cnnviz_core.toolkit.scores import region_mask

from conftest import hook_total

SIZE = 16
BOX = (1, 1, 8, 8)  # x0, y0, x1, y1: rows and columns 1..7


class ColourSegNet(nn.Module):
    """Per pixel: feature 0 = ReLU(red), feature 1 = ReLU(green); logits of
    class 0 ("red") and class 1 ("green") are those features. Every output
    position sees only its own pixel, so a region's score depends on the
    pixels inside the region alone."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 3, 1, 1))
            self.head.weight.copy_(torch.eye(2).view(2, 2, 1, 1))

    def forward(self, x):
        return self.head(self.features(x))


def scene() -> np.ndarray:
    """A red square inside BOX, a green one and a red one outside it."""
    image = np.zeros((1, 3, SIZE, SIZE), np.float32)
    image[0, 0, 2:6, 2:6] = 1.0  # red, inside the box
    image[0, 1, 10:14, 10:14] = 1.0  # green, outside
    image[0, 0, 10:14, 2:6] = 0.5  # dimmer red, outside
    return image


def adapter():
    return cnnviz_core.load_model(ColourSegNet(), input_size=(SIZE, SIZE), mean=(0, 0, 0), std=(1, 1, 1))


def box_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[BOX[1]:BOX[3], BOX[0]:BOX[2]] = True
    return mask


def test_seg_gradcam_matches_the_hand_computation():
    model, image = adapter(), scene()
    result = cnnviz_core.run("gradcam", model, image, target="region:0@1,1,8,8", layer="features", normalized=True)
    red = np.maximum(image[0, 0], 0)
    # score = sum over the box of A_red; dscore/dA_red = box mask, so alpha_red = 49 / 256, alpha_green = 0
    assert result.scores[0] == pytest.approx(red[box_mask()].sum())
    np.testing.assert_allclose(result.extras["layer_map"][0], (49 / SIZE**2) * red, rtol=1e-6, atol=1e-7)
    assert result.classes[0] == 0 and hook_total(model.module) == 0
    # the green square, outside the box and of another class, gets nothing; the map's peak is inside the box
    assert result.maps[0][10:14, 10:14].max() == 0
    row, col = np.unravel_index(np.argmax(result.maps[0]), result.maps[0].shape)
    assert BOX[1] <= row < BOX[3] and BOX[0] <= col < BOX[2]


def test_region_gradient_lives_inside_the_region():
    model, image = adapter(), scene()
    by_box = cnnviz_core.run("saliency", model, image, target=Target.region(0, box=BOX), normalized=True)
    by_mask = cnnviz_core.run("saliency", model, image, target=Target.region(0, mask=box_mask()), normalized=True)
    expected = np.zeros_like(image)
    expected[0, 0] = box_mask() & (image[0, 0] > 0)  # d ReLU(red)/d red where red > 0, inside the region
    np.testing.assert_array_equal(by_box.images, expected)
    np.testing.assert_array_equal(by_mask.images, expected)
    whole = cnnviz_core.run("saliency", model, image, target="region:0", normalized=True)
    assert whole.scores[0] == pytest.approx(np.maximum(image[0, 0], 0).sum())


def test_boxes_and_masks_are_scaled_to_a_smaller_output():
    assert region_mask(Target.region(1, box=(0, 0, 8, 8)), (8, 8), (16, 16)).nonzero()[0].max() == 3
    full = box_mask()
    small = region_mask(Target.region(1, mask=full), (8, 8), (16, 16))
    np.testing.assert_array_equal(small, region_mask(Target.region(1, box=BOX), (8, 8), (16, 16)))
    with pytest.raises(TargetError, match=r"covers no position of the model's 4x4 output"):
        region_mask(Target.region(1, box=(0, 0, 1, 1)), (4, 4), (16, 16))
    with pytest.raises(TargetError, match=r"fits neither the input \(16x16\) nor the model's 8x8 output"):
        region_mask(Target.region(1, mask=np.ones((5, 5), bool)), (8, 8), (16, 16))
    with pytest.raises(TargetError, match="out of range: the output has 2 classes"):
        region_score(torch.zeros(2, 8, 8), Target.region(4), (16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("builder, layer, pick", [("deeplabv3_mobilenet_v3_large", "backbone.16", True),
                                                  ("fcn_resnet50", "backbone.layer4", False)])
def test_torchvision_segmentation_dict_output(builder, layer, pick):
    from torchvision.models import segmentation

    torch.manual_seed(0)
    network = getattr(segmentation, builder)(weights=None, weights_backbone=None, num_classes=3, aux_loss=False).eval()
    if pick:  # the adapter picks the map from torchvision's {"out": ...}
        model = cnnviz_core.load_model(network, input_size=(32, 32), output="out")
    else:  # the dict itself reaches the region target, which reads "out"; the class count from the module
        network.num_classes = 3
        model = cnnviz_core.load_model(network, input_size=(32, 32))
    image = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    box = (5, 10, 20, 25)
    result = cnnviz_core.run("gradcam", model, image, target=f"region:2@{box[0]},{box[1]},{box[2]},{box[3]}", layer=layer,
                             normalized=True)
    with torch.no_grad():
        out = network(torch.from_numpy(image))["out"][0, 2].numpy()
    assert result.scores[0] == pytest.approx(out[box[1]:box[3], box[0]:box[2]].sum(), rel=1e-4, abs=1e-3)
    assert result.maps.shape == (1, 32, 32) and np.isfinite(result.maps).all()
    assert np.abs(result.extras["layer_map"]).max() > 0  # the region's gradient reached the backbone
    assert hook_total(network) == 0
