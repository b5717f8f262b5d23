"""Incremental occlusion against the naive definition: every occluded image
built and run through the whole model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Conv2dSame
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from torch import nn

from cnnviz_core.errors import InputError, MethodError
from cnnviz_plugins.attribution.occlusion.incremental.regions import boxes_region, through_window
from cnnviz_plugins.attribution.occlusion.incremental.ops import windowed_op
from cnnviz_plugins.attribution.occlusion.incremental.engine import IncrementalOcclusion
from conftest import hook_total, state_copy, states_equal

TOLERANCE = 1e-4


# -- tiny networks ---------------------------------------------------------------
def randomized(model: nn.Module, seed: int) -> nn.Module:
    """He-initialized convolutions (signals neither vanish nor explode, so that
    every window moves the logits) and batch norms with non-trivial statistics."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


def head(channels: int, classes: int = 7) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def with_flat_head(features: nn.Sequential, shape, classes: int = 7) -> nn.Sequential:
    """A linear layer over every pixel of the last map: each window moves the
    logits clearly (a global average would dilute it)."""
    with torch.no_grad():
        size = features.eval()(torch.zeros(shape)).numel()
    return nn.Sequential(*features, nn.Flatten(), nn.Linear(size, classes))


CHAINS = {
    # strides, paddings, dilation, groups, depthwise, 'same' padding, batch norm, activations, pooling
    "strided": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 4, stride=2), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 12, 3, stride=3, padding=2), nn.SiLU(),
        nn.MaxPool2d(3, stride=2, padding=1)),
    "dilated_grouped": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=4, dilation=2), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 16, 3, padding="same", groups=4), nn.GELU(),
        nn.Conv2d(16, 16, (3, 5), stride=(1, 2), padding=(0, 2)), nn.Sigmoid()),
    "timm_same": lambda: nn.Sequential(
        Conv2dSame(3, 8, 3, stride=2), BatchNormAct2d(8, act_layer=nn.ReLU6),
        Conv2dSame(8, 8, 5, stride=2, groups=8), BatchNormAct2d(8, act_layer=nn.SiLU),
        MaxPool2dSame(3, stride=2), nn.Conv2d(8, 16, 1), nn.Tanh(),
        AvgPool2dSame(3, stride=2)),
    "pooling": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(8, 8, 3, padding=1), nn.ELU(),
        nn.MaxPool2d(2, stride=2, ceil_mode=True, dilation=1),
        nn.AvgPool2d(2, stride=1, padding=1, divisor_override=3), nn.Conv2d(8, 8, 1),
        nn.MaxPool2d(3, stride=1, padding=1, dilation=2)),
}


class ResidualNet(nn.Module):
    """Residual blocks (identity and strided 1x1 shortcut), a concatenation and
    a spatial gate (product of two maps), with in-place ReLUs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, padding=1))
        self.shortcut2 = nn.Conv2d(8, 16, 1, stride=2)
        self.branch = nn.Conv2d(16, 8, 5, padding=2)
        self.gate = nn.Conv2d(24, 24, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = head(24)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(self.block1(x) + x)
        x = self.relu(self.block2(x) + self.shortcut2(x))
        x = torch.cat([x, self.branch(x)], dim=1)
        x = x * torch.sigmoid(self.gate(x))
        return self.head(x)


class DataDependent(nn.Module):
    """Control flow on values: fx cannot trace it, so it is kept whole."""

    def forward(self, x):
        if x.mean() > 0:
            return x * 2
        return x - 1


class WithUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.odd = DataDependent()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(8 * 8 * 8, 7))  # for 32 x 32 inputs

    def forward(self, x):
        x = self.odd(F.relu(self.conv1(x)))
        x = F.interpolate(self.conv2(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.conv3(x))


class AliasedInPlace(nn.Module):
    """Reads a map after an in-place op changed it: patches would be unsafe."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 20 * 20, 7))  # for 20 x 20 inputs

    def forward(self, x):
        a = self.conv(x)
        b = torch.relu_(a)
        return self.head(a + b)


# -- helpers -----------------------------------------------------------------------
def naive_logits(model: nn.Module, image: torch.Tensor, boxes, fill: torch.Tensor) -> torch.Tensor:
    batch = image[None].repeat(len(boxes), 1, 1, 1)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        batch[k, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
    with torch.inference_mode():
        return model(batch)


def sliding_boxes(height: int, width: int, window: tuple[int, int], stride: int) -> list[tuple[int, int, int, int]]:
    """Every stride, plus the windows flush with the far edges."""
    ys = sorted(set(range(0, height - window[0] + 1, stride)) | {height - window[0]})
    xs = sorted(set(range(0, width - window[1] + 1, stride)) | {width - window[1]})
    return [(y, y + window[0], x, x + window[1]) for y in ys for x in xs]


def max_difference(model, shape, boxes, fill_kind="zeros", seed=0, **build) -> tuple[float, IncrementalOcclusion]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(shape[1:], generator=generator)
    fill = torch.zeros_like(image) if fill_kind == "zeros" else torch.randn(shape[1:], generator=generator)
    engine = IncrementalOcclusion.build(model, shape, **build)
    got = engine.occluded_logits(image, boxes, fill)
    expected = naive_logits(model, image, boxes, fill)
    assert got.shape == expected.shape
    assert (expected - expected[:1]).abs().max() > 100 * TOLERANCE, "the windows must change the logits for the test to mean anything"
    return float((got - expected).abs().max()), engine


# -- exactness on tiny networks --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chains_match_full_occlusion_and_stay_incremental(name):
    torch.manual_seed(1)
    shape = (1, 3, 45, 38)  # odd, non-square: borders and asymmetric padding
    model = randomized(with_flat_head(CHAINS[name](), shape), seed=2)
    boxes = sliding_boxes(45, 38, (6, 6), 5)
    difference, engine = max_difference(model, shape, boxes, fill_kind="random")
    assert difference < TOLERANCE
    described = engine.describe()
    assert described["incremental_ops"] >= 6
    assert described["full_from"] == f"{len(model) - 2}"  # the flatten: every conv and pool stays incremental
    assert engine.estimated_flop_fraction((6, 6)) < 0.9


def test_residual_concat_and_gate_match_full_occlusion():
    torch.manual_seed(3)
    model = randomized(ResidualNet(), seed=4)
    boxes = sliding_boxes(40, 40, (8, 8), 6) + sliding_boxes(40, 40, (3, 11), 13)  # two sizes in one call
    difference, engine = max_difference(model, (1, 3, 40, 40), boxes, batch_size=7)  # several batches per size
    assert difference < TOLERANCE
    assert engine.describe()["full_from"] == "head.1"
    assert engine.estimated_flop_fraction((8, 8)) < 0.9


def test_unsupported_ops_fall_back_there_and_stay_exact():
    torch.manual_seed(5)
    model = randomized(WithUnsupported(), seed=5)
    difference, engine = max_difference(model, (1, 3, 32, 32), sliding_boxes(32, 32, (5, 5), 6))
    assert difference < TOLERANCE
    described = engine.describe()
    assert described["full_from"] == "odd"  # the untraceable module, then the upsampling
    assert "interpolate" in described["fallback_ops"]
    assert described["incremental_ops"] >= 2  # conv1 and its ReLU before it


def test_unsafe_in_place_ops_run_the_model_itself():
    torch.manual_seed(6)
    model = randomized(AliasedInPlace(), seed=6)
    difference, engine = max_difference(model, (1, 3, 20, 20), sliding_boxes(20, 20, (4, 4), 4))
    assert difference < TOLERANCE
    assert engine.describe()["incremental_ops"] == 0
    assert engine.estimated_flop_fraction((4, 4)) == 1.0


def test_large_windows_and_low_threshold_recompute_whole_maps_exactly():
    torch.manual_seed(7)
    model = randomized(ResidualNet(), seed=8)
    boxes = [(0, 40, 0, 40), (0, 30, 5, 35), (2, 3, 7, 8)]  # the whole image, most of it, one pixel
    difference, _ = max_difference(model, (1, 3, 40, 40), boxes)
    assert difference < TOLERANCE
    difference, engine = max_difference(model, (1, 3, 40, 40), sliding_boxes(40, 40, (6, 6), 9), full_above=0.01)
    assert difference < TOLERANCE
    assert engine.estimated_flop_fraction((6, 6)) > 0.9  # whole maps almost from the start


def test_a_new_image_replaces_the_cached_activations():
    torch.manual_seed(9)
    model = randomized(with_flat_head(CHAINS["strided"](), (1, 3, 30, 30)), seed=10)
    engine = IncrementalOcclusion.build(model, (1, 3, 30, 30))
    boxes = sliding_boxes(30, 30, (7, 7), 7)
    fill = torch.zeros(3, 30, 30)
    for seed in (0, 1, 0):
        image = torch.randn(3, 30, 30, generator=torch.Generator().manual_seed(seed))
        difference = (engine.occluded_logits(image, boxes, fill) - naive_logits(model, image, boxes, fill)).abs().max()
        assert difference < TOLERANCE


# -- regions -------------------------------------------------------------------------------
@pytest.mark.parametrize("stride, padding, dilation, kernel", [(1, 1, 1, 3), (2, 0, 1, 4), (3, 2, 2, 3), (2, 3, 1, 7)])
def test_region_holds_every_changed_output(stride, padding, dilation, kernel):
    """Through one convolution, the outputs a window changes all lie in its box,
    and the box is not much larger than needed."""
    torch.manual_seed(11)
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation).eval()
    x = torch.randn(1, 1, 29, 31)
    clean = conv(x).detach()
    op = windowed_op(conv, x.shape, clean.shape)
    boxes = np.array(sliding_boxes(29, 31, (4, 5), 3))
    region = through_window(boxes_region(boxes, 29, 31), op, tuple(clean.shape[-2:]))
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        occluded = x.clone()
        occluded[..., y0:y1, x0:x1] = 100.0
        changed = (conv(occluded).detach() != clean)[0, 0].nonzero()
        if len(changed):
            assert changed[:, 0].min() >= region.y[k] and changed[:, 0].max() < region.y[k] + region.h
            assert changed[:, 1].min() >= region.x[k] and changed[:, 1].max() < region.x[k] + region.w
    # no larger than the outputs whose span can meet a 4 x 5 box
    span = (kernel - 1) * dilation + 1
    assert region.h <= -(-(span + 3) // stride) and region.w <= -(-(span + 4) // stride)


# -- contract ----------------------------------------------------------------------------------
def test_module_left_unchanged():
    torch.manual_seed(12)
    model = randomized(ResidualNet(), seed=13)
    before, attributes, hooks = state_copy(model), {name: set(vars(m)) for name, m in model.named_modules()}, hook_total(model)
    engine = IncrementalOcclusion.build(model, (1, 3, 24, 24))
    engine.occluded_logits(torch.randn(3, 24, 24), sliding_boxes(24, 24, (4, 4), 8), torch.zeros(3, 24, 24))
    assert states_equal(before, state_copy(model))
    assert {name: set(vars(m)) for name, m in model.named_modules()} == attributes
    assert hook_total(model) == hooks == 0
    assert not model.training


def test_bad_inputs_are_refused():
    model = randomized(with_flat_head(CHAINS["strided"](), (1, 3, 20, 20)), seed=0)
    engine = IncrementalOcclusion.build(model, (1, 3, 20, 20))
    image, fill = torch.zeros(3, 20, 20), torch.zeros(3, 20, 20)
    with pytest.raises(InputError, match="box"):
        engine.occluded_logits(image, [(5, 5, 0, 4)], fill)  # empty
    with pytest.raises(InputError, match="box"):
        engine.occluded_logits(image, [(0, 4, 18, 21)], fill)  # past the edge
    with pytest.raises(InputError, match="fill"):
        engine.occluded_logits(image, [(0, 4, 0, 4)], torch.zeros(3, 19, 20))


def test_a_model_switched_to_training_mode_is_refused():
    """Batch norm in training mode normalizes by batch statistics: not per pixel."""
    model = randomized(ResidualNet(), seed=14)
    engine = IncrementalOcclusion.build(model, (1, 3, 16, 16))
    model.train()
    try:
        with pytest.raises(MethodError, match="eval"):
            engine.occluded_logits(torch.zeros(3, 16, 16), [(0, 4, 0, 4)], torch.zeros(3, 16, 16))
    finally:
        model.eval()


def test_untraceable_model_raises_method_error():
    with pytest.raises(MethodError, match="occlusion"):
        IncrementalOcclusion.build(DataDependent(), (1, 3, 8, 8))


# -- the pretrained model ---------------------------------------------------------------------
@pytest.mark.slow
def test_lite0_on_a_photo_matches_full_occlusion(lite0, photos):
    image = torch.from_numpy(lite0.prepare([photos["chelsea"]])[0][0])
    blurred = F.avg_pool2d(image[None], 9, stride=1, padding=4, count_include_pad=False)[0]
    boxes = [(0, 32, 0, 32), (96, 128, 80, 112), (192, 224, 192, 224), (104, 120, 0, 16), (40, 56, 208, 224)]
    before = state_copy(lite0.module)
    with lite0.session():
        engine = IncrementalOcclusion.build(lite0.module, (1, 3, 224, 224))
        for fill in (torch.zeros_like(image), blurred):
            got = engine.occluded_logits(image, boxes, fill)
            expected = naive_logits(lite0.module, image, boxes, fill)
            assert (got - expected).abs().max() < TOLERANCE
    assert (expected[:, 285] - expected[0, 285]).abs().max() > 0.01  # the windows matter
    described = engine.describe()
    assert described["full_from"] == "global_pool.flatten"
    assert described["incremental_ops"] > 100
    assert engine.estimated_flop_fraction((16, 16)) < 0.9
    assert states_equal(before, state_copy(lite0.module)) and hook_total(lite0.module) == 0
