"""The zoo conformance test, generated: every registered method × every
architecture of tests/zoo_models.py (random-initialized timm models made tiny),
on torch and, for methods that need no gradients, on the model's ONNX export.
Each pair either runs and returns maps or images of the input's size with
finite values, or refuses with a typed error (cnnviz_core.errors) whose
message says why; any other exception fails. Adding an architecture to ZOO
adds its tests."""

from __future__ import annotations

import pytest

from cnnviz_core.errors import CnnvizError
from conftest import hook_total
from zoo_models import ZOO, check_result, method_names, onnx_model, run_pair, runs_on, torch_model

# Per-pair costs are dominated by plotting for these analyses (matplotlib, not the model): slow split.
PLOT_BOUND = ("pruning", "tsne")


def _cases():
    for entry in ZOO:
        for name in method_names():
            for kind in ("torch", "onnx"):
                if runs_on(name, kind):
                    marks = [pytest.mark.xdist_group(f"zoo-{entry.family}")]  # one worker builds and exports each model
                    if kind == "onnx" or name in PLOT_BOUND:
                        marks.append(pytest.mark.slow)
                    yield pytest.param(entry, name, kind, id=f"{entry.family}-{name}-{kind}", marks=marks)


class _Models:
    """Each zoo model built once per session (the ONNX export once per architecture)."""

    def __init__(self, folder):
        self.folder = folder
        self.built: dict = {}

    def get(self, entry, kind):
        key = (entry.family, kind)
        if key not in self.built:
            try:
                self.built[key] = torch_model(entry) if kind == "torch" else onnx_model(entry, str(self.folder))
            except CnnvizError as error:  # an export that cannot be made refuses every method on it
                self.built[key] = error
        return self.built[key]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (a second only adds synchronisation on a shared 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return _Models(tmp_path_factory.mktemp("zoo"))


@pytest.mark.parametrize("entry, name, kind", list(_cases()))
def test_method_runs_or_refuses_with_a_reason(zoo, entry, name, kind):
    adapter = zoo.get(entry, kind)
    if isinstance(adapter, CnnvizError):
        assert str(adapter).strip()
        return
    try:
        result = run_pair(name, adapter, entry.size)
    except CnnvizError as error:
        message = str(error).strip()
        assert len(message) > 20, f"a refusal must say why, got {message!r}"
    else:
        check_result(name, result, entry.size)
    if kind == "torch":
        assert hook_total(adapter.module) == 0
        assert not adapter.module.training


def test_the_zoo_covers_what_the_issue_names():
    """Residual, depthwise with hard-swish, SiLU, dense, inception-style, ConvNeXt, RegNet, ViT, DeiT, Swin and a hybrid."""
    from torch import nn

    from zoo_models import build_module

    families = {entry.family: entry for entry in ZOO}
    assert {"resnet", "mobilenetv3", "efficientnet", "densenet", "inception_next", "convnext", "regnet", "vit", "deit",
            "swin", "levit"} <= set(families)
    kinds = {family: {type(m) for m in build_module(entry).modules()} for family, entry in families.items()}
    assert nn.Hardswish in kinds["mobilenetv3"] and nn.SiLU in kinds["efficientnet"]
    assert nn.Conv2d in kinds["levit"] and any("Attention" in k.__name__ for k in kinds["levit"])  # the hybrid
    assert build_module(families["deit"]).num_prefix_tokens == 2  # class and distillation tokens
