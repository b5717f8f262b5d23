"""A model's preprocessing can always be given and is never silently
guessed: --mean/--std/--input-size/--interpolation on the CLI for any model,
ONNX metadata props read (sidecar wins over them, options over both), a
warning saying how to give it for an ONNX file that carries none, and a
warning that timm:NAME without weights is untrained."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import onnx
import pytest

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_core.cli import build_parser, main
from cnnviz_core.config import config_from_metadata, parse_input_size
from cnnviz_core.model_options import model_options

from conftest import small_torch_adapter

NO_PREPROCESSING = "carries no preprocessing"


@pytest.fixture
def bare_onnx(tmp_path) -> str:
    """The small CNN exported to ONNX, then stripped of its sidecar: a file
    that says nothing about its preprocessing."""
    path = export_onnx(small_torch_adapter(), tmp_path / "bare.onnx")
    os.remove(path + ".json")
    return path


def with_metadata(path: str, props: dict[str, str], out: str) -> str:
    model = onnx.load(path)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out)
    return out


def loaded_quietly(spec, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", cnnviz_core.MethodWarning)
        return cnnviz_core.load_model(spec, **options)


# -- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("given, size", [(["224", "200"], (224, 200)), (["96x128"], (96, 128)), (["64"], (64, 64)),
                                         ("32 48", (32, 48))])
def test_input_sizes_parse_from_every_spelling(given, size):
    assert parse_input_size(given) == size


@pytest.mark.parametrize("bad", [["a"], ["1", "2", "3"], ["0x3"], ["96x"]])
def test_bad_input_sizes_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="H W, HxW or N"):
        parse_input_size(bad)


def test_cli_flags_become_load_model_options():
    args = build_parser().parse_args(["run", "saliency", "--model", "m.onnx", "--image", "a.png", "--out", "o",
                                      "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.2",
                                      "--input-size", "96x128", "--interpolation", "bicubic"])
    assert model_options(args) == {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "interpolation": "bicubic",
                                   "input_size": (96, 128)}
    plain = build_parser().parse_args(["run", "saliency", "--model", "m.onnx", "--image", "a.png", "--out", "o"])
    assert model_options(plain) == {}


def test_bad_flags_exit_2_before_the_model_loads(capsys, tmp_path):
    base = ["run", "saliency", "--model", "no_such_model", "--image", "skimage:chelsea", "--out", str(tmp_path / "o")]
    assert main(base + ["--input-size", "big"]) == 2
    assert "--input-size" in capsys.readouterr().err
    assert main(base + ["--std", "0.5", "0", "0.5"]) == 2
    assert "--std must be positive" in capsys.readouterr().err
    assert main(base + ["--interpolation", "sharpest"]) == 2


def test_metadata_values_are_json_or_a_bare_interpolation_word():
    props = {"cnnviz.mean": "[0.5, 0.5, 0.5]", "mean": "[0.1, 0.1, 0.1]", "std": "[0.25,0.25,0.25]",
             "interpolation": "bicubic", "input_size": "[64, 48]", "producer": "someone"}
    assert config_from_metadata(props) == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                           "interpolation": "bicubic", "input_size": [64, 48]}
    with pytest.raises(ValueError, match="cnnviz.std"):
        config_from_metadata({"cnnviz.std": "0.5 0.5 0.5"}, "m.onnx")


# -- ONNX files ------------------------------------------------------------------------
def test_an_onnx_file_without_preprocessing_warns_once_saying_how_to_give_it(bare_onnx):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = cnnviz_core.load_model(bare_onnx)
    messages = [str(w.message) for w in caught if issubclass(w.category, cnnviz_core.MethodWarning)]
    assert len(messages) == 1 and NO_PREPROCESSING in messages[0]
    for how in ("bare.onnx.json", "cnnviz.mean", "--mean R G B", "--input-size H W", "--interpolation"):
        assert how in messages[0], how
    # what it assumed, as the warning says: ImageNet statistics at the graph's own input size
    assert adapter.config.mean == cnnviz_core.PreprocessConfig().mean and adapter.config.input_size == (32, 32)
    given = loaded_quietly(bare_onnx, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # said by the caller: no warning
    assert given.config.mean == (0.5, 0.5, 0.5) and given.config.std == (0.25, 0.25, 0.25)


def test_onnx_metadata_props_give_the_preprocessing(bare_onnx, tmp_path):
    path = with_metadata(bare_onnx, {"cnnviz.mean": "[0.5, 0.5, 0.5]", "cnnviz.std": "[0.25, 0.25, 0.25]",
                                     "cnnviz.interpolation": "\"bicubic\"", "cnnviz.input_size": "[40, 40]"},
                         str(tmp_path / "described.onnx"))
    config = loaded_quietly(path).config
    assert (config.mean, config.std, config.interpolation, config.input_size) == ((0.5,) * 3, (0.25,) * 3, "bicubic", (40, 40))
    # the sidecar wins over the metadata, field by field; options win over both
    with open(path + ".json", "w", encoding="utf-8") as stream:
        json.dump({"config": {"mean": [0.1, 0.2, 0.3]}}, stream)
    config = loaded_quietly(path).config
    assert config.mean == (0.1, 0.2, 0.3) and config.std == (0.25,) * 3 and config.interpolation == "bicubic"
    config = loaded_quietly(path, mean=(0.4, 0.4, 0.4), interpolation="nearest").config
    assert config.mean == (0.4,) * 3 and config.interpolation == "nearest" and config.input_size == (40, 40)


def test_bad_onnx_metadata_is_an_input_error_naming_the_file(bare_onnx, tmp_path):
    path = with_metadata(bare_onnx, {"cnnviz.mean": "half"}, str(tmp_path / "bad.onnx"))
    with pytest.raises(cnnviz_core.InputError, match="bad.onnx") as info:
        cnnviz_core.load_model(path)
    assert "cnnviz.mean" in str(info.value)
    path = with_metadata(bare_onnx, {"cnnviz.std": "[1, 0, 1]"}, str(tmp_path / "zero_std.onnx"))
    with pytest.raises(cnnviz_core.InputError, match="std must be positive"):
        cnnviz_core.load_model(path)


def test_cli_preprocessing_flags_reach_an_onnx_model_and_its_record(capsys, bare_onnx, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "saliency", "--model", bare_onnx, "--image", "skimage:coffee", "--out", str(out), "--quiet"])
    assert code == 2  # saliency needs gradients; the warning still came once, at load
    err = capsys.readouterr().err
    assert err.count(NO_PREPROCESSING) == 1 and all(line.startswith("cnnviz: ") for line in err.splitlines())
    code = main(["run", "occlusion", "--model", bare_onnx, "--image", "skimage:coffee", "--out", str(out), "--quiet",
                 "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--input-size", "32", "--window", "16",
                 "--stride", "16"])
    assert code == 0 and NO_PREPROCESSING not in capsys.readouterr().err
    record = json.loads((out / "occlusion.json").read_text())
    assert record["model"]["config"]["mean"] == [0.5, 0.5, 0.5] and record["model"]["config"]["std"] == [0.25] * 3
    assert np.load(out / "occlusion.maps.npy").shape == (1, 32, 32)


def test_cli_input_size_resizes_the_built_in_model_inputs(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--input-size", "96",
                 "--interpolation", "bilinear", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "saliency.json").read_text())
    assert record["model"]["config"]["input_size"] == [96, 96] and record["model"]["config"]["interpolation"] == "bilinear"
    assert np.load(out / "saliency.maps.npy").shape == (1, 96, 96)


# -- timm ------------------------------------------------------------------------------
def test_timm_without_weights_says_once_that_they_are_random(tmp_path):
    with pytest.warns(cnnviz_core.MethodWarning, match="random weights") as caught:
        adapter = cnnviz_core.load_model("timm:test_resnet")
    assert len([w for w in caught if "random weights" in str(w.message)]) == 1
    assert "--weights FILE" in str(caught[0].message)
    path = tmp_path / "weights.pth"
    import torch

    torch.save(adapter.module.state_dict(), path)
    loaded_quietly("timm:test_resnet", weights=str(path))  # weights given: nothing to say


def test_export_onnx_records_the_flags_in_the_sidecar(capsys, tmp_path):
    path = tmp_path / "r.onnx"
    code = main(["export-onnx", "timm:test_resnet", str(path), "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5",
                 "--input-size", "64x64", "--interpolation", "bicubic"])
    assert code == 0
    assert capsys.readouterr().err.count("random weights") == 1
    config = json.loads((tmp_path / "r.onnx.json").read_text())["config"]
    assert config == {"input_size": [64, 64], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert loaded_quietly(str(path)).config.input_size == (64, 64)
