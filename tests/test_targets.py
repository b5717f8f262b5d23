"""Parsing what a method explains: class indices, label names, top1, neurons."""

from __future__ import annotations

import numpy as np
import pytest

from cnnviz_core import InputError, TargetError
from cnnviz_core import Target, parse_target, resolve_classes
from cnnviz_core.targets import parse_targets

LABELS = (
    "tench, Tinca tinca",
    "ostrich, Struthio camelus",
    "tabby, tabby cat",
    "Egyptian cat",
    "espresso",
)


@pytest.mark.parametrize("spec", [3, np.int64(3), "3", " 3 "])
def test_class_index(spec):
    target = parse_target(spec, num_classes=5, labels=LABELS)
    assert target == Target("class", class_index=3)
    assert isinstance(target.class_index, int)


@pytest.mark.parametrize("spec", [None, "top1", "TOP1", "top-1", ""])
def test_top1(spec):
    assert parse_target(spec, num_classes=5, labels=LABELS).kind == "top1"


def test_existing_target_passes_through():
    target = Target("class", class_index=2)
    assert parse_target(target, num_classes=5) is target


def test_exact_label():
    assert parse_target("Egyptian cat", 5, LABELS).class_index == 3
    assert parse_target("ostrich, Struthio camelus", 5, LABELS).class_index == 1


def test_label_is_case_insensitive():
    assert parse_target("EGYPTIAN CAT", 5, LABELS).class_index == 3
    assert parse_target("Espresso", 5, LABELS).class_index == 4


def test_label_synonym_after_comma():
    assert parse_target("ostrich", 5, LABELS).class_index == 1
    assert parse_target("Struthio camelus", 5, LABELS).class_index == 1
    assert parse_target("tabby cat", 5, LABELS).class_index == 2


def test_neuron_target():
    target = parse_target("layer.name:3", labels=LABELS)
    assert target.kind == "neuron"
    assert target.layer == "layer.name"
    assert target.channel == 3
    assert target.position is None
    assert target.describe() == "layer.name:3"


def test_neuron_target_with_position():
    target = parse_target("blocks.5.0:3@2,5", num_classes=5, labels=LABELS)
    assert target == Target("neuron", layer="blocks.5.0", channel=3, position=(2, 5))
    assert target.describe() == "blocks.5.0:3@2,5"


def test_label_with_colon_digits_is_a_label_not_a_neuron():
    labels = ("a:1", "b")
    target = parse_target("a:1", 2, labels)
    assert target == Target("class", class_index=0)


@pytest.mark.parametrize("spec", [5, "5", 1000, -1, "-1"])
def test_out_of_range_class_says_the_range(spec):
    with pytest.raises(TargetError) as info:
        parse_target(spec, num_classes=5, labels=LABELS)
    message = str(info.value)
    assert "5 classes" in message
    assert "0..4" in message


def test_unknown_label_suggests_close_labels():
    with pytest.raises(TargetError) as info:
        parse_target("cat", 5, LABELS)
    message = str(info.value)
    assert "'cat'" in message
    assert "Did you mean" in message
    assert "Egyptian cat" in message
    assert "tabby, tabby cat" in message


def test_unknown_label_without_close_match():
    with pytest.raises(TargetError, match="unknown label 'zebra'"):
        parse_target("zebra", 5, LABELS)


def test_label_name_without_labels_is_an_error():
    with pytest.raises(TargetError, match="no labels"):
        parse_target("Egyptian cat", num_classes=5, labels=None)


@pytest.mark.parametrize("spec", [2.5, True, [1], {"class": 1}])
def test_bad_target_types(spec):
    with pytest.raises(TargetError):
        parse_target(spec, 5, LABELS)


def test_target_error_is_an_input_error():
    assert issubclass(TargetError, InputError)


# -- parse_targets ------------------------------------------------------------------
def test_one_target_broadcast_to_every_input():
    targets = parse_targets("ostrich", batch=3, num_classes=5, labels=LABELS)
    assert targets == [Target("class", class_index=1)] * 3


def test_default_target_is_top1_for_every_input():
    targets = parse_targets(None, batch=2, num_classes=5, labels=LABELS)
    assert [t.kind for t in targets] == ["top1", "top1"]


def test_one_target_per_input():
    targets = parse_targets([0, "espresso", "top1"], batch=3, num_classes=5, labels=LABELS)
    assert targets[0] == Target("class", class_index=0)
    assert targets[1] == Target("class", class_index=4)
    assert targets[2].kind == "top1"


def test_target_count_mismatch():
    with pytest.raises(TargetError) as info:
        parse_targets([0, 1], batch=3, num_classes=5, labels=LABELS)
    assert "2 targets for 3 inputs" in str(info.value)


def test_parse_targets_checks_each_target():
    with pytest.raises(TargetError, match="out of range"):
        parse_targets([0, 9], batch=2, num_classes=5, labels=LABELS)


# -- resolve_classes -------------------------------------------------------------------
def test_resolve_classes_top1_from_logits():
    logits = np.array([[0.1, 2.0, -1.0, 0.0, 0.5], [3.0, 0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 9.0, 0.0, 0.0]])
    targets = [Target.top1(), Target.top1(), Target("class", class_index=0)]
    classes = resolve_classes(targets, logits)
    assert classes.dtype == np.int64
    assert classes.tolist() == [1, 4, 0]


def test_resolve_classes_refuses_neurons():
    with pytest.raises(TargetError, match="neuron"):
        resolve_classes([Target("neuron", layer="x", channel=1)], np.zeros((1, 5)))


def test_describe_with_labels_and_json():
    target = Target("class", class_index=3)
    assert target.describe(LABELS) == "3 (Egyptian cat)"
    assert target.describe() == "3"
    assert target.to_json()["class_index"] == 3
    assert Target.top1().describe() == "top1"


# -- validate_targets: the one check of targets against what a method takes ----------------
def test_validate_targets_refuses_kinds_a_method_does_not_take():
    from cnnviz_core import validate_targets

    neuron, cls, top1 = Target("neuron", layer="features.0", channel=1), Target("class", class_index=3), Target.top1()
    validate_targets([cls, top1], {"class", "top1"}, "some_method")  # no adapter needed without neurons
    with pytest.raises(TargetError, match=r"^some_method needs a class index or label name or top1; got the neuron target features.0:1$"):
        validate_targets([cls, neuron], {"class", "top1"}, "some_method")
    with pytest.raises(TargetError, match=r"^maker needs a class index or label name; got top1\. give a class$"):
        validate_targets([top1], {"class"}, "maker", advice="give a class")
    with pytest.raises(TargetError, match=r"needs a neuron target layer:channel\[@y,x\]; got class 3"):
        validate_targets([cls], {"neuron"}, "unit_method")
    with pytest.raises(ValueError, match="unknown target kinds"):
        validate_targets([cls], {"class", "neurons"}, "typo")


def test_validate_targets_checks_neurons_against_the_layer_shapes():
    from cnnviz_core import LayerNotFoundError, validate_targets
    from conftest import small_torch_adapter  # SmallConvNet: features.4 is (1, 16, 16, 16) at 32 px

    adapter = small_torch_adapter()
    good = [parse_target("features.4:15"), parse_target("features.4:0@15,15")]
    validate_targets(good, {"neuron"}, "m", adapter)
    for spec, message in [("features.4:16", "has 16 channels .*channel 16 is out of range"),
                          ("features.4:0@16,0", "position 16,0 is outside layer 'features.4''s 16x16 map"),
                          ("fc:0@0,0", "no spatial map")]:
        with pytest.raises(TargetError, match=message):
            validate_targets([parse_target(spec)], {"neuron"}, "m", adapter)
    with pytest.raises(LayerNotFoundError):
        validate_targets([parse_target("nolayer:0")], {"neuron"}, "m", adapter)


# -- score selection: one meaning per target ------------------------------------------------
def test_neuron_score_is_the_channel_mean_or_one_unit():
    import torch

    from cnnviz_core.toolkit import neuron_score, target_scores

    output = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (C, h, w) for one input
    assert neuron_score(output, parse_target("l:1")).item() == pytest.approx(output[1].mean().item())
    assert neuron_score(output, parse_target("l:1@2,3")).item() == output[1, 2, 3].item()
    # a map at twice the size: the mean is unchanged and @y,x is scaled to the same place
    bigger = output.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert neuron_score(bigger, parse_target("l:1")).item() == pytest.approx(neuron_score(output, parse_target("l:1")).item())
    assert neuron_score(bigger, parse_target("l:1@2,3"), full_size=(3, 4)).item() == output[1, 2, 3].item()

    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, -1.0, 0.0]])
    targets = [parse_target("l:0@0,0"), Target.top1()]
    layer = torch.stack([output, output + 100])
    scores = target_scores(targets, logits, {"l": layer})
    assert scores.tolist() == pytest.approx([0.0, 5.0])  # unit (0, 0) of input 0; top-1 logit of input 1
    probs = target_scores([Target("class", class_index=1)] * 2, logits, {}, score="prob")
    assert probs.tolist() == pytest.approx(logits.softmax(dim=1)[:, 1].tolist())
