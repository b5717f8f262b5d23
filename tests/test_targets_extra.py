"""Targets beyond a class: a callable scored from the model's outputs, and a
multi-label head's sigmoid score; parsing and refusals of the new kinds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_core import Target, TargetError
from cnnviz_core.targets import parse_target, parse_targets

from conftest import hook_total, small_torch_adapter


def test_callable_target_equals_the_class_target_it_reproduces(small_inputs):
    adapter = small_torch_adapter()
    by_class = cnnviz_core.run("gradcam", adapter, small_inputs, target=3, normalized=True)
    by_function = cnnviz_core.run("gradcam", adapter, small_inputs, target=lambda outputs: outputs[:, 3], normalized=True)
    assert np.abs(by_class.maps).max() > 0
    np.testing.assert_allclose(by_function.maps, by_class.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_function.scores, by_class.scores, rtol=1e-6)
    assert (by_function.classes == -1).all() and (by_class.classes == 3).all()
    assert by_function.targets[0].describe().startswith("callable:")
    # the input gradient too: a function of two logits is their gradients' combination
    saliency = {t: cnnviz_core.run("saliency", adapter, small_inputs, target=t, normalized=True).images for t in (1, 2)}
    combined = cnnviz_core.run("saliency", adapter, small_inputs, target=lambda o: 2 * o[:, 1] - o[:, 2], normalized=True)
    np.testing.assert_allclose(combined.images, 2 * saliency[1] - saliency[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("function, message", [
    (lambda outputs: outputs[:, :2], r"shape \(\d, 2\).*one score per input"),
    (lambda outputs: outputs.sum(), r"shape \(\).*one score per input"),
    (lambda outputs: outputs[:, 0].detach().numpy(), r"returned ndarray.*torch tensor"),
])
def test_a_callable_returning_other_than_one_score_per_input_is_refused(small_inputs, function, message):
    adapter = small_torch_adapter()
    with pytest.raises(TargetError, match=message):
        cnnviz_core.run("gradcam", adapter, small_inputs, target=function, normalized=True)
    assert hook_total(adapter.module) == 0 and all(p.requires_grad for p in adapter.module.parameters())


def test_multilabel_gradient_is_the_sigmoid_slope_times_the_logit_gradient(small_inputs):
    adapter = small_torch_adapter()
    label = 2
    logit = cnnviz_core.run("saliency", adapter, small_inputs, target=label, normalized=True)
    sigmoid = cnnviz_core.run("saliency", adapter, small_inputs, target=f"multilabel:{label}", normalized=True)
    z = torch.from_numpy(logit.scores.astype(np.float64))
    slope = (torch.sigmoid(z) * (1 - torch.sigmoid(z))).numpy()
    np.testing.assert_allclose(sigmoid.scores, torch.sigmoid(z).numpy(), rtol=1e-5)
    np.testing.assert_allclose(sigmoid.images, slope[:, None, None, None] * logit.images, rtol=1e-4, atol=1e-7)
    assert (sigmoid.classes == label).all()
    # --score prob (softmax) is a class target's option; the multilabel score stays the sigmoid
    prob = cnnviz_core.run("saliency", adapter, small_inputs, target=Target.multilabel(label), score="prob", normalized=True)
    np.testing.assert_allclose(prob.scores, sigmoid.scores, rtol=1e-6)


def test_spec_strings_and_constructors_agree():
    labels = ["background", "cat", "dog"]
    assert parse_target("multilabel:dog", 3, labels) == Target.multilabel(2)
    assert parse_target("region:cat@1,2,30,40", 3, labels) == Target.region(1, box=(1, 2, 30, 40))
    assert parse_target("region:1", 3, labels) == Target.region(1)
    assert parse_target("detection:2@0,0,5.5,6", 3, labels) == Target.detection(2, (0, 0, 5.5, 6))
    assert Target.detection(2, (0, 0, 5.5, 6)).describe() == "detection:2@0,0,5.5,6"
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    region = Target.region(1, mask=mask)
    assert re.fullmatch(r"region:1@mask6px-[0-9a-f]{8}", region.describe())
    other = mask.copy()
    other[2, 2], other[5, 5] = False, True  # as many positions, elsewhere: another target, another name
    assert Target.region(1, mask=other).describe() != region.describe()
    function_target = parse_targets(lambda outputs: outputs[:, 0], 2, 3, labels)
    assert [t.kind for t in function_target] == ["callable", "callable"]
    record = json.loads(json.dumps([region.to_json(), function_target[0].to_json()]))
    assert record[0]["mask"] == {"shape": [8, 8], "positions": 6} and record[1]["function"].endswith("<lambda>")


@pytest.mark.parametrize("spec, message", [
    ("multilabel:7", r"out of range.*3 classes"),
    ("multilabel:1@0,0,2,2", r"multilabel target takes no box"),
    ("region:1@5,5,2,9", r"0 <= x0 < x1"),
    ("region:1@1,2,3", r"four finite numbers"),
    ("detection:1", r"needs the object's box"),
    ("detection:horse@0,0,4,4", r"unknown label 'horse'"),
])
def test_bad_specs_are_refused_with_what_to_give(spec, message):
    with pytest.raises(TargetError, match=message):
        parse_target(spec, 3, ["background", "cat", "dog"])


def test_methods_that_cannot_score_an_output_target_say_which_can(small_inputs):
    adapter = small_torch_adapter()
    with pytest.raises(TargetError, match=r"occlusion needs .*got multilabel:1.*gradcam.*saliency"):
        cnnviz_core.run("occlusion", adapter, small_inputs, target="multilabel:1", normalized=True)
    with pytest.raises(TargetError, match=r"drise needs a detection:CLASS@x0,y0,x1,y1 target; got class 1"):
        cnnviz_core.run("drise", adapter, small_inputs, target=1, normalized=True)


def test_a_class_target_on_a_map_output_points_to_region_targets():
    class MapNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x)

    adapter = cnnviz_core.load_model(MapNet(), input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(TargetError, match=r"needs \(B, classes\) logits.*\(1, 2, 8, 8\).*region:CLASS"):
        cnnviz_core.run("gradcam", adapter, np.zeros((1, 3, 8, 8), np.float32), layer="conv", normalized=True)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_methods_that_turn_targets_into_classes_refuse_output_targets(small_inputs, method):
    adapter = small_torch_adapter()
    for target in ("multilabel:1", lambda outputs: outputs[:, 1]):
        with pytest.raises(TargetError, match=rf"{method} needs .*got (multilabel:1|callable:)"):
            cnnviz_core.run(method, adapter, small_inputs, target=target, normalized=True)
