"""A run leaves the user's model where it was: same device, dtype, train/eval
flags, requires_grad flags and parameters bit for bit, after a run of every
method kind (attribution, synthesis, analysis through run and analyze), on
success and on error. ``auto`` keeps a model on the GPU it is already on, and
an ONNX model whose onnxruntime has no CUDA provider falls back to the CPU
under ``auto`` (explicit ``cuda:N`` stays an error).

There is no GPU on these machines, so two stand-ins make moves observable:
- ``cpu:0`` is a device name torch accepts on the CPU: ``TorchAdapter.to``
  really calls ``module.to("cpu:0")`` and ``adapter.device`` reads "cpu:0",
  so a model left "moved" is seen, with every method's real code running;
- for ``auto`` between GPUs, an injected inventory lists fake GPUs and a
  TorchAdapter subclass answers to ``cuda:N`` names while computing on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import InputError, MethodWarning
from cnnviz_core.devices import DeviceInfo, DeviceInventory
from cnnviz_core.scheduler import Scheduler

from conftest import SMALL_CONFIG, hook_total, small_torch_adapter, state_copy, states_equal
from tiny_models import SmallConvNet

OTHER = "cpu:0"  # a second device name that works on the CPU (see the module docstring)
GiB = 1 << 30

# Per kind, real methods with settings small enough for the small net; the
# generated conformance test (tests/test_conformance.py) covers every method.
ATTRIBUTION = [("saliency", {}), ("gradcam", {}), ("occlusion", {"window": 8, "stride": 8})]
SYNTHESIS = [("adversarial", {"attack": "fgsm"}), ("fooling_images", {"generations": 2, "population": 4, "parents": 2})]
ANALYSIS = [("filters", {}), ("top_patches", {})]


def other_device_scheduler(device: str = OTHER) -> Scheduler:
    inventory = DeviceInventory((DeviceInfo(OTHER), DeviceInfo("cpu")))
    return Scheduler(device, inventory=inventory, progress=False)


def recorded_moves(adapter, monkeypatch) -> list[str]:
    """Every device the adapter is sent to, in order (the real move still happens)."""
    moves: list[str] = []
    original = adapter.to

    def to(device):
        moves.append(device)
        return original(device)

    monkeypatch.setattr(adapter, "to", to)
    return moves


def placement(module: torch.nn.Module) -> dict:
    return {
        "state": state_copy(module),
        "devices": {name: str(t.device) for name, t in module.state_dict(keep_vars=True).items()},
        "dtypes": {name: t.dtype for name, t in module.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in module.named_parameters()},
        "training": {name: m.training for name, m in module.named_modules()},
        "hooks": hook_total(module),
    }


def assert_placed_as(adapter, before: dict) -> None:
    after = placement(adapter.module)
    assert adapter.device == "cpu"
    assert states_equal(after.pop("state"), before["state"])
    assert after == {k: v for k, v in before.items() if k != "state"}


def small_dataset(count: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(count)]


def adapter_with_odd_flags() -> TorchAdapter:
    """The small net as a user may hand it over: in training mode, one layer frozen."""
    adapter = small_torch_adapter()
    adapter.module.train()
    adapter.module.features[0].weight.requires_grad_(False)
    return adapter


def run_kind(kind: str, name: str, params: dict, adapter, scheduler, **overrides):
    if kind == "attribution":
        inputs = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
        return cnnviz_core.run(name, adapter, inputs, overrides.get("target"), scheduler=scheduler, **params)
    if kind == "synthesis":
        pixels = np.random.default_rng(0).uniform(size=(1, 3, 32, 32)).astype(np.float32)
        inputs = None if name == "fooling_images" else pixels
        return cnnviz_core.run(name, adapter, inputs, overrides.get("target", [1]), scheduler=scheduler, **params)
    return cnnviz_core.analyze({name: params}, adapter, small_dataset(), scheduler=scheduler)[name]


CASES = [("attribution", *c) for c in ATTRIBUTION] + [("synthesis", *c) for c in SYNTHESIS] + [("analysis", *c) for c in ANALYSIS]


@pytest.mark.parametrize("kind,name,params", CASES, ids=[c[1] for c in CASES])
def test_a_run_puts_the_model_back(kind, name, params, monkeypatch):
    adapter = adapter_with_odd_flags()
    before = placement(adapter.module)
    moves = recorded_moves(adapter, monkeypatch)
    run_kind(kind, name, params, adapter, other_device_scheduler())
    assert moves[0] == OTHER and moves[-1] == "cpu"  # it did run elsewhere, and came back
    assert_placed_as(adapter, before)


@pytest.mark.parametrize("kind,name,params", CASES, ids=[c[1] for c in CASES])
def test_a_run_that_fails_midway_puts_the_model_back(kind, name, params, monkeypatch):
    adapter = adapter_with_odd_flags()
    before = placement(adapter.module)
    moves = recorded_moves(adapter, monkeypatch)
    if name == "filters":  # reads weights only: a layer it does not have fails after the move
        with pytest.raises(cnnviz_core.LayerNotFoundError):
            run_kind(kind, name, {"layer": "no_such_layer"}, adapter, other_device_scheduler())
    else:
        adapter.module.fail = True  # the forward raises after the feature layers
        with pytest.raises(RuntimeError, match="injected failure"):
            run_kind(kind, name, params, adapter, other_device_scheduler())
        adapter.module.fail = False
    assert moves and moves[-1] == "cpu"
    assert_placed_as(adapter, before)


BAD_INPUT = [
    ("attribution", "saliency", {}, {"target": 99}, cnnviz_core.TargetError),
    ("attribution", "gradcam", {"layer": "nope"}, {}, cnnviz_core.LayerNotFoundError),
    ("synthesis", "adversarial", {"attack": "fgsm"}, {"target": [99]}, cnnviz_core.TargetError),
    ("analysis", "top_patches", {"layer": "nope"}, {}, cnnviz_core.LayerNotFoundError),
]


@pytest.mark.parametrize("kind,name,params,overrides,error", BAD_INPUT, ids=[f"{c[1]}-{c[4].__name__}" for c in BAD_INPUT])
def test_a_run_with_bad_input_leaves_the_model_as_it_was(kind, name, params, overrides, error, monkeypatch):
    adapter = adapter_with_odd_flags()
    before = placement(adapter.module)
    recorded_moves(adapter, monkeypatch)
    with pytest.raises(error):
        run_kind(kind, name, params, adapter, other_device_scheduler(), **overrides)
    assert_placed_as(adapter, before)


def test_single_run_analysis_puts_the_model_back(monkeypatch):
    adapter = adapter_with_odd_flags()
    before = placement(adapter.module)
    moves = recorded_moves(adapter, monkeypatch)
    cnnviz_core.run("top_patches", adapter, small_dataset(), scheduler=other_device_scheduler())
    assert moves[0] == OTHER
    assert_placed_as(adapter, before)


def test_a_model_already_on_the_run_device_is_not_moved(monkeypatch):
    adapter = small_torch_adapter()
    moves = recorded_moves(adapter, monkeypatch)
    cnnviz_core.run("saliency", adapter, np.zeros((1, 3, 32, 32), np.float32), scheduler=other_device_scheduler("cpu"))
    assert moves == []


# -- auto between GPUs -----------------------------------------------------------
class PretendGpuAdapter(TorchAdapter):
    """No GPU here: answers to ``cuda:N`` names (recording each move) but keeps
    the module and its inputs on the CPU, which is all saliency touches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moves: list[str] = []

    @property
    def device(self) -> str:  # the name it pretends to be on, not the module's real (CPU) device
        return self._pretend_device

    @device.setter
    def device(self, value: str) -> None:
        self._pretend_device = value

    def to(self, device: str) -> "PretendGpuAdapter":
        self.moves.append(device)
        self.device = device
        return self

    def tensor(self, inputs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """cuda:1 has more free memory than cuda:0."""
    inventory = DeviceInventory((DeviceInfo("cuda:0", 16 * GiB, 2 * GiB), DeviceInfo("cuda:1", 16 * GiB, 12 * GiB), DeviceInfo("cpu")))
    monkeypatch.setattr(DeviceInventory, "detect", classmethod(lambda cls, refresh=False: inventory))
    return inventory


def test_auto_keeps_a_model_on_the_gpu_it_is_on(two_fake_gpus):
    adapter = PretendGpuAdapter(SmallConvNet(), "small", SMALL_CONFIG)
    adapter.device = "cuda:0"
    cnnviz_core.run("saliency", adapter, np.zeros((1, 3, 32, 32), np.float32))
    assert adapter.moves == []  # not moved to cuda:1 although it has more free memory


def test_auto_moves_a_cpu_model_to_the_freest_gpu_and_back(two_fake_gpus):
    adapter = PretendGpuAdapter(SmallConvNet(), "small", SMALL_CONFIG)
    cnnviz_core.run("saliency", adapter, np.zeros((1, 3, 32, 32), np.float32))
    assert adapter.moves == ["cuda:1", "cpu"]
    adapter.moves.clear()
    adapter.module.fail = True
    with pytest.raises(RuntimeError, match="injected failure"):
        cnnviz_core.run("saliency", adapter, np.zeros((1, 3, 32, 32), np.float32))
    assert adapter.moves == ["cuda:1", "cpu"] and adapter.device == "cpu"


# -- ONNX without a CUDA provider ------------------------------------------------
@pytest.fixture
def onnxruntime_without_cuda(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])


def one_fake_gpu_scheduler(device: str) -> Scheduler:
    inventory = DeviceInventory((DeviceInfo("cuda:0", 16 * GiB, 8 * GiB), DeviceInfo("cpu")))
    return Scheduler(device, inventory=inventory, progress=False)


def test_onnx_under_auto_falls_back_to_the_cpu_with_a_warning(small_onnx_path, onnxruntime_without_cuda, small_inputs):
    adapter = cnnviz_core.load_model(small_onnx_path)
    expected = cnnviz_core.run("occlusion", adapter, small_inputs, window=8, stride=8,
                               scheduler=other_device_scheduler("cpu")).maps
    with pytest.warns(MethodWarning, match="running on the CPU"):
        result = cnnviz_core.run("occlusion", adapter, small_inputs, window=8, stride=8, scheduler=one_fake_gpu_scheduler("auto"))
    np.testing.assert_array_equal(result.maps, expected)
    assert adapter.device == "cpu" and adapter.describe()["providers"] == ["CPUExecutionProvider"]


def test_onnx_on_an_explicit_gpu_without_a_cuda_provider_is_an_input_error(small_onnx_path, onnxruntime_without_cuda, small_inputs):
    adapter = cnnviz_core.load_model(small_onnx_path)
    with pytest.raises(InputError, match="no usable CUDA provider"):
        cnnviz_core.run("occlusion", adapter, small_inputs, scheduler=one_fake_gpu_scheduler("cuda:0"))
    assert adapter.device == "cpu"
    assert adapter.logits(small_inputs).shape == (2, 5)  # its session still works


def test_providers_for_a_gpu_needs_the_cuda_provider(onnxruntime_without_cuda):
    from cnnviz_adapters.onnx_adapter import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="cuda:1"):
        providers_for("cuda:1")


def test_adapter_reads_the_device_from_the_module_after_a_user_moves_it():
    """A module moved after it was wrapped: the adapter must report where it is
    now, since a run restores the model to that device afterwards (the meta
    device stands in for a GPU on this CPU-only machine)."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    adapter = cnnviz_core.load_model(module)
    assert adapter.device == "cpu"
    module.to("meta")
    assert adapter.device == "meta"
