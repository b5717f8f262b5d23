"""Shared fixtures: the pretrained model, its ONNX export, real photographs,
and small seeded models on both adapters."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig

from tiny_models import SmallConvNet

SMALL_CONFIG = PreprocessConfig(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

# In chelsea the cat fills the frame, so "the map peaks on the cat" is checked
# on a composite: chelsea shrunk into a plain grey canvas. CAT_BOX is where the
# cat lies once the composite is resized to the model's 224 x 224 (rows, cols).
CAT_BOX = (slice(20, 120), slice(112, 212))


def in_box(map_2d, box=CAT_BOX) -> bool:
    row, col = np.unravel_index(np.argmax(map_2d), map_2d.shape)
    return box[0].start <= row < box[0].stop and box[1].start <= col < box[1].stop


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, str]:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee", "astronaut"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths[name] = str(path)
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(Image.fromarray(data.chelsea()).resize((200, 200)), (224, 40))
    canvas.save(folder / "cat_on_grey.png")
    paths["cat_on_grey"] = str(folder / "cat_on_grey.png")
    return paths


@pytest.fixture(scope="session")
def lite0():
    return cnnviz_core.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_onnx(lite0, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("onnx") / "lite0.onnx"
    export_onnx(lite0, path)
    return str(path)


def small_torch_adapter(seed: int = 0) -> TorchAdapter:
    return TorchAdapter(SmallConvNet(seed=seed), "small_convnet", SMALL_CONFIG)


@pytest.fixture(scope="session")
def small_onnx_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    export_onnx(small_torch_adapter(), path)
    return str(path)


@pytest.fixture
def small_inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 3, 32, 32)).astype(np.float32)


def hook_total(module: torch.nn.Module) -> int:
    from cnnviz_core.toolkit.hooks import hook_count

    return hook_count(module)


def state_copy(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def output_files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture(scope="module")
def digits():
    """The trained digits CNN (trained once per process) as an adapter."""
    from digits import digits_adapter

    return digits_adapter()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> str:
    """40 labelled digit images in class folders, as a dataset run reads them."""
    from digits import write_digits_folder

    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=4)


# `make test` runs the suite on two pytest-xdist workers, one per core. Each
# worker (and every process it starts) then computes on one thread, so the two
# never spin against each other. A test file stays on one worker (its module
# fixtures, such as a demo run, are built once), unless it groups its tests
# itself; the Ray tests share one worker because each starts a cluster.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

RAY_MODULES = {"test_dataset_runs.py", "test_ray_cluster.py", "test_readme_usage.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("ray" if item.path.name in RAY_MODULES else item.path.name))
