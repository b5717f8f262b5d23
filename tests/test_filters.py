"""filters: conv kernels as tiles, checked pixel by pixel against the weights,
on the pretrained EfficientNet-Lite0 and its ONNX export."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_core.cli import main as cli_main
from cnnviz_core.errors import InputError, LayerNotFoundError

from conftest import output_files

pytestmark = pytest.mark.slow
GAP = 4  # render.tile's gap between tiles


def minmax(w: np.ndarray) -> np.ndarray:
    w = w.astype(np.float64)
    if w.max() == w.min():
        return np.full(w.shape, 0.5)  # a dead (constant) filter is mid-grey
    return (w - w.min()) / (w.max() - w.min())


def tile_at(grid: np.ndarray, index: int, columns: int, size: int) -> np.ndarray:
    row, column = divmod(index, columns)
    return grid[row * (size + GAP) : row * (size + GAP) + size, column * (size + GAP) : column * (size + GAP) + size]


def test_first_layer_of_lite0_in_rgb_one_normalized_tile_per_filter(lite0):
    result = cnnviz_core.run("filters", lite0)
    kernel = lite0.module.conv_stem.weight.detach().numpy()
    assert result.facts["layer"] == "conv_stem" and result.facts["mode"] == "rgb" and result.facts["shape"] == [32, 3, 3, 3]
    assert np.array_equal(result.weights, kernel)
    columns, size = math.ceil(math.sqrt(32)), 48  # 3x3 kernels enlarged 16 times
    rows = math.ceil(32 / columns)
    grid = result.pictures["grid"]
    assert grid.shape == (rows * size + (rows - 1) * GAP, columns * size + (columns - 1) * GAP, 3)
    for i in range(32):
        tile = tile_at(grid, i, columns, size)
        expected = np.kron(np.transpose(minmax(kernel[i]), (1, 2, 0)), np.ones((16, 16, 1)))  # nearest-neighbour
        assert np.abs(tile / 255.0 - expected).max() <= 0.5 / 255 + 1e-9
        assert tile.min() == 0 and tile.max() == 255  # each filter uses the full range on its own


def test_symmetric_normalization_puts_zero_at_grey(lite0):
    result = cnnviz_core.run("filters", lite0, normalize="symmetric", tile=3)
    kernel = lite0.module.conv_stem.weight.detach().numpy().astype(np.float64)
    peaks = np.abs(kernel).reshape(32, -1).max(axis=1)
    expected = 0.5 + 0.5 * kernel / peaks[:, None, None, None]
    np.testing.assert_allclose(result.tiles, np.transpose(expected, (0, 2, 3, 1)), atol=1e-6)
    assert result.pictures["grid"].shape[0] == 6 * 3 + 5 * GAP  # tile=3: no enlargement of a 3x3 kernel


def test_torch_and_onnx_filters_agree(lite0, lite0_onnx):
    """The export folds batch norm into conv_stem: ONNX filter i is torch filter
    i times γ_i/σ_i, so min-max tiles agree, inverted where γ_i/σ_i < 0."""
    torch_result = cnnviz_core.run("filters", lite0)
    onnx_result = cnnviz_core.run("filters", lite0_onnx)
    assert onnx_result.facts["layer"] == "conv_stem" and onnx_result.facts["weight_name"] != "conv_stem.weight"
    bn = lite0.module.bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(onnx_result.weights, torch_result.weights * scale[:, None, None, None], rtol=1e-4, atol=1e-6)
    flipped = scale < 0
    expected = np.where(flipped[:, None, None, None], 1 - torch_result.tiles, torch_result.tiles)
    np.testing.assert_allclose(onnx_result.tiles, expected, atol=1e-4)
    assert onnx_result.pictures["grid"].shape == torch_result.pictures["grid"].shape


def test_onnx_layer_answers_to_module_path_node_name_and_initializer(lite0_onnx):
    by_path = cnnviz_core.run("filters", lite0_onnx, layer="blocks.0.0.conv_dw")
    by_node = cnnviz_core.run("filters", lite0_onnx, layer="/blocks/blocks.0/blocks.0.0/conv_dw/Conv")
    by_initializer = cnnviz_core.run("filters", lite0_onnx, layer=by_path.facts["weight_name"])
    assert by_path.facts["layer"] == by_node.facts["layer"] == by_initializer.facts["layer"] == "blocks.0.0.conv_dw"
    assert np.array_equal(by_path.weights, by_node.weights) and np.array_equal(by_path.weights, by_initializer.weights)


def test_depthwise_shows_one_tile_per_channel(lite0):
    result = cnnviz_core.run("filters", lite0, layer="blocks.0.0.conv_dw", mode="slices")
    kernel = lite0.module.blocks[0][0].conv_dw.weight.detach().numpy()
    assert result.facts["groups"] == 32 and result.tiles.shape == (32, 3, 3)
    np.testing.assert_allclose(result.tiles, np.stack([minmax(k[0]) for k in kernel]), atol=1e-6)
    assert result.pictures["grid"].shape == (6 * 48 + 5 * GAP, 6 * 48 + 5 * GAP, 3)


def test_deeper_layer_slices_share_their_filters_scale_and_average_mode(lite0):
    pointwise = lite0.module.blocks[1][0].conv_pwl.weight.detach().numpy()  # (24, 96, 1, 1)
    slices = cnnviz_core.run("filters", lite0, layer="blocks.1.0.conv_pwl", max_filters=5, max_inputs=7)
    assert slices.facts["mode"] == "slices"  # auto: a 1x1 kernel is shown input by input
    np.testing.assert_allclose(slices.tiles, np.stack([minmax(f) for f in pointwise[:5]])[:, :7], atol=1e-6)
    assert slices.pictures["grid"].shape == (5 * 48 + 4 * GAP, 7 * 48 + 6 * GAP, 3)
    average = cnnviz_core.run("filters", lite0, layer="blocks.2.0.conv_pw", mode="average", max_filters=10)
    assert average.tiles.shape == (10, 1, 1) and np.allclose(average.tiles, 0.5)  # a 1x1 mean is one value: grey
    spatial = cnnviz_core.run("filters", lite0, layer="blocks.1.0.conv_dw", mode="average")
    assert spatial.facts["mode"] == "average" and spatial.tiles.shape == (96, 3, 3)


def test_wrong_layer_names_the_convolutions(lite0, lite0_onnx):
    with pytest.raises(InputError, match="not a convolution layer.*conv_stem"):
        cnnviz_core.run("filters", lite0, layer="bn1")
    with pytest.raises(InputError, match="is a linear layer.*conv_stem, blocks.0.0.conv_dw"):
        cnnviz_core.run("filters", lite0, layer="classifier")
    for model in (lite0, lite0_onnx):
        with pytest.raises(LayerNotFoundError, match="no convolution layer 'conv_stme'.*Its convolution layers: conv_stem"):
            cnnviz_core.run("filters", model, layer="conv_stme")
    with pytest.raises(InputError, match="rgb needs filters over 3 input channels"):
        cnnviz_core.run("filters", lite0, layer="blocks.1.0.conv_pw", mode="rgb")


def test_cli_writes_the_grid_and_refuses_a_bad_layer(tmp_path, lite0_onnx, capsys):
    out = tmp_path / "out"
    assert cli_main(["run", "filters", "--model", lite0_onnx, "--out", str(out), "--quiet"]) == 0
    assert {"filters.grid.png", "filters.weights.npy", "filters.json"} <= set(output_files(out))
    bad = tmp_path / "bad"
    assert cli_main(["run", "filters", "--model", lite0_onnx, "--layer", "/bn1/act/Clip", "--out", str(bad)]) == 2
    assert "not a convolution layer" in capsys.readouterr().err and not os.path.exists(bad)


def test_a_1d_convolution_is_drawn_as_rows_and_a_3d_one_refused():
    from cnnviz_adapters.torch_adapter import TorchAdapter

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 5), torch.nn.Conv3d(4, 2, 3))
    module.num_classes = 2  # results describe the model; it takes no image, so say its class count
    adapter = TorchAdapter(module, "conv1d")
    result = cnnviz_core.run("filters", adapter)
    kernel = adapter.module[0].weight.detach().numpy()
    assert result.facts["layer"] == "0" and result.facts["mode"] == "average" and result.tiles.shape == (4, 1, 5)
    np.testing.assert_allclose(result.tiles[:, 0], np.stack([minmax(k.mean(axis=0)) for k in kernel]), atol=1e-6)
    assert result.pictures["grid"].shape == (2 * 10 + GAP, 2 * 50 + GAP, 3)  # 1x5 kernels enlarged 10 times, 2 x 2 tiles
    with pytest.raises(InputError, match="1-D and 2-D convolutions"):
        cnnviz_core.run("filters", adapter, layer="1")
