"""`cnnviz models --layers MODEL`: each layer's output shape from one probe
forward at the model's input size, token layers with the map they are read
as, and which methods can use each layer (only those the adapter's
capabilities allow)."""

from __future__ import annotations

import re

import timm
import torch

import cnnviz_core
from cnnviz_core.cli import main
from cnnviz_core.cli_models import layer_methods, print_layers
from tiny_models import TinyCamNet


def uses(row: str) -> set[str]:
    """The 'usable as' column of a row (after the last shape)."""
    tail = row.removesuffix("(default target layer)").rsplit(")", 1)[-1]
    return {word.strip() for word in tail.split(",") if word.strip() and word.strip() != "-"}


def test_shapes_are_the_forward_shapes(capsys):
    net = TinyCamNet()
    adapter = cnnviz_core.load_model(net, input_size=(8, 6))
    shapes = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
               for name, module in net.named_modules() if name]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, 8, 6))
    finally:
        for handle in handles:
            handle.remove()
    assert print_layers(adapter) == 0
    out = capsys.readouterr().out
    assert "shapes for one input of 8 x 6" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith(" ")}
    for name, shape in shapes.items():
        assert "(" + ", ".join(map(str, shape)) + ")" in rows[name], name
    assert uses(rows["features.0"]) == {"map", "tensor", "conv"}  # (1, 2, 4, 3): a map, and a convolution
    assert uses(rows["fc"]) == {"tensor"}
    assert uses(rows["pool"]) == {"tensor"}  # (1, 2, 1, 1): one position is not a map
    assert rows["features"].endswith("(default target layer)")


def test_transformer_layers_show_tokens_and_their_map(capsys):
    torch.manual_seed(0)
    module = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    assert print_layers(cnnviz_core.load_model(module, input_size=(64, 64))) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith(" ")}
    norm1 = rows["blocks.1.norm1"]
    assert "(1, 18, 192) tokens, 2 prefix dropped → map (1, 192, 4, 4)" in norm1
    assert "map" in uses(norm1) and norm1.endswith("(default target layer)")
    assert "(1, 192, 4, 4)" in rows["patch_embed.proj"] and "conv" in uses(rows["patch_embed.proj"])
    assert "(1, 1000)" in rows["head"] and "map" not in uses(rows["head"])
    legend = re.search(r"^  map +(.*)$", out, re.M).group(1)
    assert "gradcam" in legend and "score_cam" in legend and "tsne" not in legend


def test_methods_follow_the_adapter_capabilities(small_onnx_path):
    onnx = cnnviz_core.load_model(small_onnx_path)
    torch_model = cnnviz_core.load_model(TinyCamNet(), input_size=(8, 8))
    on_onnx, on_torch = layer_methods(onnx), layer_methods(torch_model)
    assert "gradcam" in on_torch["map"] and "gradcam" not in on_onnx["map"]  # gradients: torch only
    assert "score_cam" in on_onnx["map"] and "tsne" in on_onnx["tensor"]
    assert on_torch["conv"] == ["filters"]


def test_unknown_model_is_a_one_line_error(capsys):
    code = main(["models", "--layers", "timm:no_such_model_xyz"])
    assert code == 2 and "no model" in capsys.readouterr().err
