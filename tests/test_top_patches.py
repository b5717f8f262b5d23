"""top_patches and its receptive-field geometry: boxes hold the input-gradient
support of their unit (digits CNN, a net with stride / padding / dilation /
a residual branch, EfficientNet-Lite0), equal it exactly on a linear net, the
streaming top-k equals a brute-force one, and ONNX gives what torch gives."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import InputError, LayerNotFoundError
from cnnviz_core.config import PreprocessConfig
from cnnviz_core import ReceptiveField, Span
from cnnviz_core.model_probes import outside_dependence

from conftest import hook_total, state_copy, states_equal
from digits import as_images, digits_adapter, digits_split

STRIDED_CONFIG = PreprocessConfig(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class StridedNet(nn.Module):
    """Asymmetric padding, a strided padded conv, pooling with padding, a
    dilated conv beside a 1×1 branch (summed), and a strided valid conv."""

    def __init__(self, linear: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 5, stride=2, padding=1)
        self.act1 = nn.Identity() if linear else nn.ReLU()
        # max pooling routes the gradient to one position: the exact-support check needs a linear pool
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if linear else nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=2, dilation=2)
        self.branch = nn.Conv2d(6, 8, 1)
        self.act2 = nn.Identity() if linear else nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(F.pad(x, (2, 0, 1, 0)))))  # pad left 2, top 1
        x = self.act2(self.conv2(x) + self.branch(x))
        return self.head(self.conv3(x).mean(dim=(2, 3)))


def strided_adapter(linear: bool = False) -> TorchAdapter:
    return TorchAdapter(StridedNet(linear).eval(), "strided_net" + ("_linear" if linear else ""), STRIDED_CONFIG)


def unit_supports(adapter, layer: str, images: np.ndarray, units: list[tuple[int | None, int, int]]) -> np.ndarray:
    """(n, H, W) bool: where the gradient of unit i (channel, y, x) of
    ``layer`` wrt normalized input image i is nonzero; channel None mixes all
    channels at (y, x) with random positive weights. One forward and one
    backward for all units (a batch of independent copies)."""
    module = dict(adapter.module.named_modules())[layer]
    captured = {}
    handle = module.register_forward_hook(lambda _m, _i, output: captured.__setitem__("out", output))
    try:
        inputs = torch.from_numpy(np.ascontiguousarray(images, np.float32)).requires_grad_(True)
        adapter.module.eval()
        adapter.module(inputs)
    finally:
        handle.remove()
    out = captured["out"]
    mix = torch.rand(out.shape[1], generator=torch.Generator().manual_seed(1)) + 0.5
    score = sum((out[i, :, y, x] * mix).sum() if c is None else out[i, c, y, x] for i, (c, y, x) in enumerate(units))
    (gradient,) = torch.autograd.grad(score, inputs)
    return (gradient.abs().sum(dim=1) > 0).numpy()


def unit_support(adapter, layer: str, image: np.ndarray, channel: int | None, y: int, x: int) -> np.ndarray:
    return unit_supports(adapter, layer, image[None], [(channel, y, x)])[0]


def normalized(images: list[np.ndarray], config: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W, 3) images at the input size → the normalized batch, as the dataset pass makes it."""
    pixels = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255
    return ((pixels - np.array(config.mean)[:, None, None]) / np.array(config.std)[:, None, None]).astype(np.float32)


def bounding_box(support: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def inside(inner, box) -> bool:
    return inner is None or (box[0] <= inner[0] and inner[1] <= box[1] and box[2] <= inner[2] and inner[3] <= box[3])


@pytest.fixture(scope="module")
def digits():
    return digits_adapter()


@pytest.fixture(scope="module")
def digits_data():
    _, _, test_x, test_y = digits_split()
    return list(zip(as_images(test_x), test_y))


@pytest.fixture(scope="module")
def digits_inputs(digits, digits_data):
    return normalized([image for image, _ in digits_data], digits.config)


@pytest.fixture(scope="module")
def digits_result(digits, digits_data):
    return cnnviz_core.run("top_patches", digits, digits_data, layer="features.4", top_k=5, max_grids=4)


# -- geometry ------------------------------------------------------------------
def test_linear_net_boxes_equal_the_gradient_support_at_every_position():
    """On a linear net the support of a unit's input gradient is its whole
    receptive field: the computed boxes must equal it exactly, through the
    asymmetric pad, strides, padding, dilation and the residual branch."""
    adapter = strided_adapter(linear=True)
    image = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    for layer in ("conv1", "pool", "conv2", "act2", "conv3"):
        geometry = adapter.receptive_field(layer)
        assert geometry.method == "graph"
        units = [(None, y, x) for y in range(len(geometry.rows)) for x in range(len(geometry.cols))]
        supports = unit_supports(adapter, layer, np.repeat(image[None], len(units), axis=0), units)
        for (_, y, x), support in zip(units, supports):
            assert tuple(geometry.boxes(y, x)) == bounding_box(support), (layer, y, x)


def test_receptive_field_by_hand_for_the_first_layers():
    """conv1 reads the left/top-padded image: output row y covers padded rows
    2y − 1 .. 2y + 3, i.e. image rows 2y − 2 .. 2y + 2 (pad top 1), clipped;
    columns 2x − 3 .. 2x + 1 (pad left 2)."""
    geometry = strided_adapter().receptive_field("conv1")
    assert len(geometry.rows) == 16 and len(geometry.cols) == 16  # (32 + 1 + 2·1 − 5) // 2 + 1; (32 + 2 + 2·1 − 5) // 2 + 1
    for y in range(16):
        assert (geometry.rows.lo[y], geometry.rows.hi[y]) == (max(2 * y - 2, 0), min(2 * y + 2, 31))
        assert (geometry.cols.lo[y], geometry.cols.hi[y]) == (max(2 * y - 3, 0), min(2 * y + 1, 31))


def test_torch_and_onnx_geometry_agree_on_the_strided_net(tmp_path):
    adapter = strided_adapter()
    path = export_onnx(adapter, tmp_path / "strided.onnx")
    onnx_adapter = cnnviz_core.load_model(path)
    tensors = {"conv2": "/conv2/Conv", "act2": "/act2/Relu", "conv3": "/conv3/Conv"}
    for torch_layer, onnx_layer in tensors.items():
        a, b = adapter.receptive_field(torch_layer), onnx_adapter.receptive_field(onnx_layer)
        assert b.method == "graph"
        for span_a, span_b in ((a.rows, b.rows), (a.cols, b.cols)):
            assert np.array_equal(span_a.lo, span_b.lo) and np.array_equal(span_a.hi, span_b.hi)


class BusyNet(nn.Module):
    """Ops the geometry must follow without losing positions: channel slices,
    concatenation, in-place adds, a softmax over channels, a grouped reshape,
    bilinear upsampling and a non-global adaptive pool."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(11)  # 22 → 11: ONNX exports it as AveragePool
        self.out = nn.Identity()

    def forward(self, x):
        x = self.conv1(x)
        y = self.conv2(x)
        y += x  # in place
        z = torch.cat([y, x[:, :2]], dim=1).softmax(dim=1)
        batch, channels, height, width = z.shape
        z = z.view(batch, 2, channels // 2, height, width).flip(1).reshape(batch, channels, height, width)  # flip: channels only
        z = F.interpolate(self.conv3(z), scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(self.pool(z)).mean(dim=(2, 3))


def test_busy_net_geometry_is_followed_and_holds_the_support(tmp_path):
    config = PreprocessConfig(input_size=(24, 24), mean=(0.5,) * 3, std=(0.5,) * 3)
    adapter = TorchAdapter(BusyNet().eval(), "busy", config)
    image = np.random.default_rng(0).normal(size=(3, 24, 24)).astype(np.float32)
    onnx_adapter = cnnviz_core.load_model(export_onnx(adapter, tmp_path / "busy.onnx"))
    for layer, onnx_layer in (("conv3", "/conv3/Conv"), ("out", "/pool/AveragePool")):
        geometry = adapter.receptive_field(layer)
        assert geometry.method == "graph", layer
        onnx_geometry = onnx_adapter.receptive_field(onnx_layer)
        units = [(None, y, x) for y in range(len(geometry.rows)) for x in range(len(geometry.cols))]
        supports = unit_supports(adapter, layer, np.repeat(image[None], len(units), axis=0), units)
        for (_, y, x), support in zip(units, supports):
            assert inside(bounding_box(support), geometry.boxes(y, x)), (layer, y, x)
            assert inside(bounding_box(support), onnx_geometry.boxes(y, x)), (layer, y, x)


def test_the_check_catches_a_receptive_field_that_is_too_small():
    adapter = strided_adapter()
    right = adapter.receptive_field("conv2")
    assert outside_dependence(adapter, "conv2", right) is None
    shrunk_hi = right.rows.hi.copy()
    shrunk_hi[len(shrunk_hi) // 2] -= 2  # the centre row misses its last two input rows
    wrong = ReceptiveField(Span(right.rows.lo, shrunk_hi), right.cols, "graph")
    assert outside_dependence(adapter, "conv2", wrong) is not None


class SwappedNet(nn.Module):
    """Transposes H and W twice: the tracer cannot follow positions through
    the transposes, so the receptive field must be measured."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.swap = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.conv1(x)).transpose(2, 3)
        x = self.swap(torch.relu(self.conv2(x)).transpose(2, 3))
        return self.head(x.mean(dim=(2, 3)))


def test_unknown_geometry_is_measured_on_torch_and_onnx(tmp_path):
    config = PreprocessConfig(input_size=(16, 20), mean=(0.5,) * 3, std=(0.5,) * 3)
    adapter = TorchAdapter(SwappedNet().eval(), "swapped", config)
    measured = adapter.receptive_field("swap")
    assert measured.method == "gradient"
    # conv1 (k3 s2 p1) then conv2 (k3 p1) on the half-size map: rows 2y − 3 .. 2y + 3, clipped
    assert [(int(lo), int(hi)) for lo, hi in zip(measured.rows.lo, measured.rows.hi)] == \
        [(max(2 * y - 3, 0), min(2 * y + 3, 15)) for y in range(8)]
    assert [(int(lo), int(hi)) for lo, hi in zip(measured.cols.lo, measured.cols.hi)] == \
        [(max(2 * x - 3, 0), min(2 * x + 3, 19)) for x in range(10)]
    path = export_onnx(adapter, tmp_path / "swapped.onnx")
    probed = cnnviz_core.load_model(path).receptive_field("/Transpose_1")
    assert probed.method == "probe"
    assert np.array_equal(probed.rows.lo, measured.rows.lo) and np.array_equal(probed.cols.hi, measured.cols.hi)


# -- top patches ---------------------------------------------------------------
def test_streaming_top_k_equals_brute_force(digits, digits_data, digits_inputs, digits_result):
    result = digits_result
    maps = digits.activations(digits_inputs, ["features.4"])["features.4"]  # (360, 32, 4, 4)
    flat = maps.reshape(len(maps), maps.shape[1], -1)
    best, where = flat.max(axis=2), flat.argmax(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(len(maps))[:, None], best.shape), -best), axis=0)[:5].T  # (C, 5)
    assert result.values.shape == (32, 5)
    assert np.array_equal(result.images, order)
    np.testing.assert_allclose(result.values, np.take_along_axis(best.T, order, axis=1), rtol=1e-6)
    positions = np.take_along_axis(where.T, order, axis=1)
    assert np.array_equal(result.positions[..., 0] * 4 + result.positions[..., 1], positions)
    assert (np.diff(result.values, axis=1) <= 0).all()
    geometry = digits.receptive_field("features.4")
    assert np.array_equal(result.boxes, geometry.boxes(result.positions[..., 0], result.positions[..., 1]))
    index = result.facts["index"]
    assert len(index) == 32 * 5
    first = index[0]
    assert (first["channel"], first["rank"], first["index"]) == (0, 0, int(order[0, 0]))
    assert first["image"] == f"item{order[0, 0]}" and first["box"] == [int(v) for v in result.boxes[0, 0]]
    assert set(result.pictures) == {"channel_0", "channel_1", "channel_2", "channel_3", "overview"}
    assert result.pictures["overview"].shape == (4 * 64 + 3 * 4, 5 * 64 + 4 * 4, 3)


def test_digits_boxes_contain_the_gradient_support_of_their_unit(digits, digits_inputs, digits_result):
    result = digits_result
    entries = [(c, rank) for c in range(32) for rank in range(5)]
    units = [(c, *result.positions[c, rank]) for c, rank in entries]
    supports = unit_supports(digits, "features.4", digits_inputs[[result.images[c, r] for c, r in entries]], units)
    for (c, rank), support in zip(entries, supports):
        assert support.any() or result.values[c, rank] <= 0  # a unit that did not fire passes no gradient
        assert inside(bounding_box(support), result.boxes[c, rank]), (c, rank)


def test_strided_net_boxes_contain_the_gradient_support():
    adapter = strided_adapter()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(12)]
    for layer in ("pool", "act2", "conv3"):
        result = cnnviz_core.run("top_patches", adapter, images, layer=layer, top_k=3, max_grids=0)
        entries = [(c, rank) for c in range(result.values.shape[0]) for rank in range(3)]
        batch = normalized([images[result.images[c, r]] for c, r in entries], adapter.config)
        supports = unit_supports(adapter, layer, batch, [(c, *result.positions[c, r]) for c, r in entries])
        for (c, rank), support in zip(entries, supports):
            assert inside(bounding_box(support), result.boxes[c, rank]), (layer, c, rank)


def test_onnx_gives_the_same_top_patches_as_torch(digits, digits_data, digits_result, tmp_path):
    path = export_onnx(digits, tmp_path / "digits.onnx")
    onnx_result = cnnviz_core.run("top_patches", path, digits_data, layer="/features/features.4/MaxPool", top_k=5, max_grids=4)
    assert onnx_result.facts["receptive_field"]["method"] == "graph"
    assert np.array_equal(onnx_result.images, digits_result.images)
    assert np.array_equal(onnx_result.boxes, digits_result.boxes)
    assert np.array_equal(onnx_result.positions, digits_result.positions)
    np.testing.assert_allclose(onnx_result.values, digits_result.values, atol=1e-4)
    assert np.array_equal(onnx_result.pictures["overview"], digits_result.pictures["overview"])


def test_pretrained_lite0_on_photos_torch_and_onnx(lite0, lite0_onnx, photos, tmp_path):
    paths = [photos[name] for name in ("chelsea", "coffee", "astronaut", "cat_on_grey")]
    result = cnnviz_core.run("top_patches", lite0, paths, layer="blocks.2", channels="0-5", top_k=2, max_grids=2)
    assert result.values.shape == (6, 2) and result.facts["receptive_field"]["method"] == "graph"
    inputs, _ = lite0.prepare(paths)
    for c, rank in ((0, 0), (3, 1), (5, 0)):
        y, x = result.positions[c, rank]
        support = unit_support(lite0, "blocks.2", inputs[result.images[c, rank]], c, y, x)
        assert support.any() and inside(bounding_box(support), result.boxes[c, rank])
        box = result.boxes[c, rank]
        assert box[1] - box[0] < 224 and box[3] - box[2] < 224  # a 28×28 map: patches, not whole images
    assert {entry["image"] for entry in result.facts["index"]} <= {"chelsea", "coffee", "astronaut", "cat_on_grey"}
    onnx_result = cnnviz_core.run("top_patches", lite0_onnx, paths, layer="/blocks/blocks.2/blocks.2.1/Add",
                                  channels="0-5", top_k=2, max_grids=2)
    assert np.array_equal(onnx_result.images, result.images) and np.array_equal(onnx_result.boxes, result.boxes)
    np.testing.assert_allclose(onnx_result.values, result.values, atol=1e-4)
    written = result.save(tmp_path)
    assert os.path.exists(tmp_path / "top_patches.channel_0.png") and os.path.exists(tmp_path / "top_patches.json")
    assert len(written) == 2 + 1 + 5 + 1  # 2 channel grids, overview, 5 arrays, the record


def test_channel_choice_and_short_datasets(digits, digits_data):
    result = cnnviz_core.run("top_patches", digits, digits_data[:3], layer="features.0", channels="2,5,7-8", top_k=9)
    assert list(result.channels) == [2, 5, 7, 8] and result.values.shape == (4, 3)  # 3 images: lists of 3
    assert [k for k in result.pictures] == ["channel_2", "channel_5", "channel_7", "channel_8", "overview"]
    assert cnnviz_core.run("top_patches", digits, digits_data[:3], layer="features.0", channels="3").values.shape[0] == 3


def test_bad_requests_are_refused_before_any_work(digits, digits_data):
    before, hooks = state_copy(digits.module), hook_total(digits.module)
    with pytest.raises(InputError, match="channel"):
        cnnviz_core.run("top_patches", digits, digits_data[:4], layer="features.0", channels="3,99")
    with pytest.raises(InputError, match="--channels"):
        cnnviz_core.run("top_patches", digits, digits_data[:4], layer="features.0", channels="first")
    with pytest.raises(InputError, match="feature map"):
        cnnviz_core.run("top_patches", digits, digits_data[:4], layer="fc")
    with pytest.raises(LayerNotFoundError):
        cnnviz_core.run("top_patches", digits, digits_data[:4], layer="features.99")
    with pytest.raises(InputError, match="min|least"):
        cnnviz_core.run("top_patches", digits, digits_data[:4], top_k=0)
    assert hook_total(digits.module) == hooks and states_equal(state_copy(digits.module), before)


def test_default_layer_is_the_last_spatial_layer(digits, digits_data):
    result = cnnviz_core.run("top_patches", digits, digits_data[:20], top_k=2, max_grids=1)
    assert result.facts["layer"] == digits.default_layer()
    assert result.values.shape == (64, 2) and hook_total(digits.module) == 0
