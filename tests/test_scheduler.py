"""Device choice, batched execution with out-of-memory back-off, and progress."""

from __future__ import annotations


import numpy as np
import pytest

from cnnviz_core.devices import DeviceInfo, DeviceInventory
from cnnviz_core.errors import InputError, OutOfMemoryError
from cnnviz_core.scheduler import Scheduler, is_out_of_memory

GiB = 1 << 30


def two_gpus() -> DeviceInventory:
    return DeviceInventory(
        (
            DeviceInfo("cuda:0", 16 * GiB, 2 * GiB),
            DeviceInfo("cuda:1", 16 * GiB, 12 * GiB),
            DeviceInfo("cpu"),
        )
    )


def cpu_only() -> DeviceInventory:
    return DeviceInventory((DeviceInfo("cpu"),))


class FakeOOM(Exception):
    """Stands in for a CUDA out-of-memory error on a machine without a GPU."""


def fake_oom_check(error: BaseException) -> bool:
    return isinstance(error, FakeOOM)


def make_scheduler(**kwargs) -> Scheduler:
    kwargs.setdefault("inventory", cpu_only())
    kwargs.setdefault("progress", False)
    return Scheduler(device=kwargs.pop("device", "auto"), **kwargs)


# -- devices -----------------------------------------------------------------
def test_auto_picks_cuda_device_with_most_free_memory():
    assert two_gpus().choose("auto").name == "cuda:1"
    assert two_gpus().choose(None).name == "cuda:1"


def test_auto_prefers_most_free_even_when_listed_first():
    inventory = DeviceInventory(
        (DeviceInfo("cuda:0", 8 * GiB, 7 * GiB), DeviceInfo("cuda:1", 80 * GiB, 1 * GiB), DeviceInfo("cpu"))
    )
    assert inventory.choose("auto").name == "cuda:0"


def test_plain_cuda_means_cuda0():
    chosen = two_gpus().choose("cuda")
    assert chosen.name == "cuda:0"
    assert chosen.is_cuda


def test_explicit_devices_are_honoured():
    assert two_gpus().choose("cuda:1").name == "cuda:1"
    assert two_gpus().choose(" CPU ").name == "cpu"
    assert not two_gpus().choose("cpu").is_cuda


def test_missing_cuda_device_names_available_devices():
    with pytest.raises(InputError) as info:
        two_gpus().choose("cuda:5")
    message = str(info.value)
    assert "cuda:5" in message
    for name in ("cuda:0", "cuda:1", "cpu"):
        assert name in message


def test_cuda_request_on_cpu_only_inventory_is_an_input_error():
    with pytest.raises(InputError, match="cpu"):
        cpu_only().choose("cuda")


def test_cpu_only_inventory_auto_is_cpu():
    chosen = cpu_only().choose("auto")
    assert chosen.name == "cpu"
    assert not chosen.is_cuda


def test_scheduler_uses_injected_inventory():
    scheduler = Scheduler(device="auto", inventory=two_gpus(), progress=False)
    assert scheduler.device_name == "cuda:1"


def test_detect_always_lists_the_cpu_last():
    inventory = DeviceInventory.detect()
    assert inventory.devices[-1].name == "cpu"
    assert all(d.is_cuda for d in inventory.devices[:-1])


def test_auto_keeps_the_gpu_the_model_is_on():
    assert two_gpus().choose("auto", prefer="cuda:0").name == "cuda:0"  # though cuda:1 has more free memory
    assert two_gpus().choose("auto", prefer="cuda").name == "cuda:0"
    assert two_gpus().choose("auto", prefer="cpu").name == "cuda:1"  # a CPU model goes to the freest GPU
    assert two_gpus().choose("cpu", prefer="cuda:0").name == "cpu"  # an explicit device wins
    assert Scheduler("auto", inventory=two_gpus(), progress=False, prefer="cuda:0").device_name == "cuda:0"


class CountingProbe:
    """A memory probe that records which devices it was asked about."""

    def __init__(self, free: dict[str, int]):
        self.free, self.asked = free, []

    def __call__(self, name: str):
        self.asked.append(name)
        return self.free[name], 16 * GiB


def lazy_gpus(probe, cheap: bool = True, count: int = 2) -> DeviceInventory:
    return DeviceInventory((*(DeviceInfo(f"cuda:{i}") for i in range(count)), DeviceInfo("cpu")), probe, cheap)


def test_memory_is_asked_only_of_the_devices_compared():
    probe = CountingProbe({"cuda:0": 1 * GiB, "cuda:1": 9 * GiB})
    assert lazy_gpus(probe).choose("auto", prefer="cuda:0").name == "cuda:0"
    assert lazy_gpus(probe).choose("cuda:1").name == "cuda:1"
    assert lazy_gpus(probe, count=1).choose("auto").name == "cuda:0"
    assert probe.asked == []  # nothing to compare: no question
    chosen = lazy_gpus(probe).choose("auto")
    assert (chosen.name, chosen.free_memory) == ("cuda:1", 9 * GiB)
    assert probe.asked == ["cuda:0", "cuda:1"]


def test_a_probe_that_creates_contexts_is_not_asked_to_compare_gpus():
    probe = CountingProbe({"cuda:0": 1 * GiB, "cuda:1": 9 * GiB})
    inventory = lazy_gpus(probe, cheap=False)
    assert inventory.choose("auto").name == "cuda:0"
    assert probe.asked == []
    assert inventory.memory("cuda:1") == (9 * GiB, 16 * GiB)  # asked only when wanted
    assert probe.asked == ["cuda:1"]


def test_detect_lists_gpus_without_asking_their_memory_and_caches(monkeypatch):
    """No GPU here: torch is told there are two, and any memory question is recorded."""
    import sys

    import torch

    from cnnviz_core import devices

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(str(device)) or (GiB, 2 * GiB))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML absent: torch is the only probe
    monkeypatch.setattr(devices, "_detected", None)
    inventory = DeviceInventory.detect()
    assert [d.name for d in inventory.devices] == ["cuda:0", "cuda:1", "cpu"]
    assert DeviceInventory.detect() is inventory  # once per process
    scheduler = Scheduler("auto", progress=False)
    assert scheduler.device_name == "cuda:0"
    assert asked == []  # no context was created on any GPU
    assert scheduler.memory() == (GiB, 2 * GiB) and asked == ["cuda:0"]  # torch, for the one device chosen
    assert Scheduler("cpu", progress=False).memory() is None


# -- map_batches ---------------------------------------------------------------
@pytest.mark.parametrize("total,batch_size", [(10, 3), (7, 7), (5, 100), (1, 1), (9, 1)])
def test_outputs_in_order_and_each_index_once(total, batch_size):
    seen: list[int] = []

    def work(start, stop):
        seen.extend(range(start, stop))
        return list(range(start, stop))

    outputs = make_scheduler().map_batches(work, total, batch_size)
    flat = [i for part in outputs for i in part]
    assert flat == list(range(total))
    assert sorted(seen) == list(range(total))
    assert all(len(part) <= batch_size for part in outputs)


def test_zero_total_calls_nothing():
    calls = []
    assert make_scheduler().map_batches(lambda a, b: calls.append((a, b)), 0, 4) == []
    assert calls == []


def test_oom_backoff_halves_until_it_fits_and_keeps_smaller_size():
    limit = 3  # batches larger than this "run out of memory"
    calls: list[tuple[int, int]] = []

    def work(start, stop):
        calls.append((start, stop))
        if stop - start > limit:
            raise FakeOOM("simulated CUDA out of memory")
        return list(range(start, stop))

    scheduler = make_scheduler(oom_check=fake_oom_check)
    outputs = scheduler.map_batches(work, 20, 16)
    assert [i for part in outputs for i in part] == list(range(20))
    # 16 and 8 and 4 were abandoned; 2 fits and stays for the rest of the run.
    assert scheduler.backoffs == [16, 8, 4]
    successful = [(a, b) for a, b in calls if b - a <= limit]
    assert all(b - a == 2 for a, b in successful)
    assert successful[0] == (0, 2)
    # Never grows back after backing off.
    sizes_after_fit = [b - a for a, b in calls[calls.index((0, 2)):]]
    assert max(sizes_after_fit) == 2


def test_oom_backoff_rounds_down_on_odd_sizes():
    def work(start, stop):
        if stop - start > 2:
            raise FakeOOM()
        return stop - start

    scheduler = make_scheduler(oom_check=fake_oom_check)
    outputs = scheduler.map_batches(work, 7, 7)
    assert scheduler.backoffs == [7, 3]
    assert sum(outputs) == 7
    assert outputs == [1, 1, 1, 1, 1, 1, 1]


def test_oom_at_batch_size_one_raises_out_of_memory_error():
    def work(start, stop):
        raise FakeOOM("always out of memory")

    scheduler = make_scheduler(oom_check=fake_oom_check)
    with pytest.raises(OutOfMemoryError) as info:
        scheduler.map_batches(work, 4, 4)
    assert isinstance(info.value.__cause__, FakeOOM)
    assert "batch of 1" in str(info.value)
    assert "cpu" in str(info.value)
    assert scheduler.backoffs == [4, 2]


def test_non_oom_error_propagates_unchanged():
    original = ValueError("a real bug in the method")

    def work(start, stop):
        raise original

    scheduler = make_scheduler(oom_check=fake_oom_check)
    with pytest.raises(ValueError) as info:
        scheduler.map_batches(work, 8, 4)
    assert info.value is original
    assert scheduler.backoffs == []


def test_on_batch_called_once_per_batch_in_order():
    reports = []

    def work(start, stop):
        return f"out{start}-{stop}"

    outputs = make_scheduler().map_batches(work, 7, 3, on_batch=lambda a, b, out: reports.append((a, b, out)))
    assert reports == [(0, 3, "out0-3"), (3, 6, "out3-6"), (6, 7, "out6-7")]
    assert outputs == ["out0-3", "out3-6", "out6-7"]


def test_on_batch_not_called_for_abandoned_batches():
    reports = []

    def work(start, stop):
        if stop - start > 2:
            raise FakeOOM()
        return (start, stop)

    make_scheduler(oom_check=fake_oom_check).map_batches(
        work, 4, 4, on_batch=lambda a, b, out: reports.append((a, b, out))
    )
    assert reports == [(0, 2, (0, 2)), (2, 4, (2, 4))]


def test_nested_map_batches_cover_everything():
    scheduler = make_scheduler()

    def outer(start, stop):
        return scheduler.map_batches(lambda a, b: [(start, i) for i in range(a, b)], 3, 2)

    outputs = scheduler.map_batches(outer, 4, 3)
    flat = [pair for part in outputs for inner in part for pair in inner]
    assert flat == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)]
    # Afterwards a fresh top-level run still works.
    assert scheduler.map_batches(lambda a, b: b - a, 5, 2) == [2, 2, 1]


def test_default_oom_check_backs_off_on_memory_error():
    def work(start, stop):
        if stop - start > 1:
            raise MemoryError()
        return start

    scheduler = make_scheduler()
    assert scheduler.map_batches(work, 3, 2) == [0, 1, 2]
    assert scheduler.backoffs == [2]


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
    ],
)
def test_is_out_of_memory_recognises_oom(error):
    assert is_out_of_memory(error) is True


@pytest.mark.parametrize(
    "error",
    [
        ValueError("out of memory"),
        RuntimeError("shape mismatch"),
        OutOfMemoryError("already final"),
        KeyError("x"),
    ],
)
def test_is_out_of_memory_rejects_other_errors(error):
    assert is_out_of_memory(error) is False


def test_is_out_of_memory_recognises_torch_oom_class():
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA error")) is True


# (progress itself: tests/test_progress.py)


def test_backoff_is_remembered_across_calls_of_the_same_kind():
    class FakeOOM(Exception):
        pass

    scheduler = Scheduler(device="cpu", inventory=DeviceInventory((DeviceInfo("cpu"),)),
                          oom_check=lambda e: isinstance(e, FakeOOM), progress=False)
    sizes = []

    def work(start, stop):
        sizes.append(stop - start)
        if stop - start > 4:
            raise FakeOOM()
        return stop - start

    scheduler.map_batches(work, 16, 16, desc="windows")
    sizes.clear()
    scheduler.map_batches(work, 16, 16, desc="windows")
    assert sizes == [4, 4, 4, 4]  # no failed attempt the second time


# -- batch sizes from measured memory, CPU fallback ------------------------------
class FakeMemory:
    """A DeviceMemory with the test's figures: each item of a batch allocates
    ``per_item`` bytes on top of ``fixed``; ``free`` bytes are available."""

    def __init__(self, per_item: int, free: int, fixed: int = 0):
        self.per_item, self.free, self.fixed = per_item, free, fixed
        self.current = self.highest = 0
        self.starts = 0

    def start(self, device):
        self.starts += 1
        self.highest = 0

    def peak(self, device):
        return self.highest

    def available(self, device):
        return self.free

    def run(self, items: int):
        self.highest = max(self.highest, self.fixed + items * self.per_item)


def one_gpu() -> DeviceInventory:
    return DeviceInventory((DeviceInfo("cuda:0", 16 * GiB, 10 * GiB), DeviceInfo("cpu")))


@pytest.mark.parametrize("per_item,free,expected", [
    (GiB, 10 * GiB, 8),  # 80 % of 10 GiB at 1 GiB an item
    (GiB // 2, 10 * GiB, 16),
    (3 * GiB, 10 * GiB, 2),
    (20 * GiB, 10 * GiB, 1),  # not even one fits the budget: 1, and the back-off is the safety net
    (1 << 20, 10 * GiB, 32),  # never above the method's batch
])
def test_gpu_batch_follows_the_measured_cost_and_free_memory(per_item, free, expected):
    memory = FakeMemory(per_item, free)
    sizes = []

    def work(start, stop):
        memory.run(stop - start)
        sizes.append(stop - start)
        return list(range(start, stop))

    scheduler = make_scheduler(device="cuda:0", inventory=one_gpu(), memory=memory)
    outputs = scheduler.map_batches(work, 60, 32, desc="job")
    assert [i for part in outputs for i in part] == list(range(60))
    assert sizes[0] == 2  # the probe: its output is kept, not recomputed
    assert set(sizes[1:-1]) <= {expected} and sizes[1] == min(expected, 58)
    (measured,) = scheduler.measurements
    assert (measured.per_item, measured.available, measured.batch) == (per_item, free, expected)
    again = []
    scheduler.map_batches(lambda a, b: again.append(b - a), 40, 32, desc="job")
    assert again[0] == min(expected, 40) and memory.starts == 1  # learned: measured once per kind of job


def test_fixed_cost_counts_against_the_items_of_the_probe():
    memory = FakeMemory(per_item=GiB, free=10 * GiB, fixed=2 * GiB)  # probe of 2: 4 GiB, 2 GiB an item
    scheduler = make_scheduler(device="cuda:0", inventory=one_gpu(), memory=memory)
    scheduler.map_batches(lambda a, b: memory.run(b - a), 20, 32)
    assert scheduler.measurements[0].per_item == 2 * GiB and scheduler.measurements[0].batch == 4


def test_a_nested_job_runs_unmeasured_inside_its_callers_measurement():
    memory = FakeMemory(per_item=GiB, free=10 * GiB)

    def outer(start, stop):
        return scheduler.map_batches(lambda a, b: memory.run((stop - start) * (b - a)), 16, 16, desc="inner")

    scheduler = make_scheduler(device="cuda:0", inventory=one_gpu(), memory=memory)
    scheduler.map_batches(outer, 10, 8, desc="outer")
    assert [m.desc for m in scheduler.measurements][0] == "outer"
    assert scheduler.measurements[0].per_item == 16 * GiB  # the inner work counted in the outer item's cost


def test_cpu_and_unmeasured_gpus_keep_the_methods_batch():
    sizes = []
    make_scheduler(device="cpu").map_batches(lambda a, b: sizes.append(b - a), 10, 4)
    make_scheduler(device="cuda:0", inventory=one_gpu()).map_batches(lambda a, b: sizes.append(b - a), 10, 4)
    assert sizes == [4, 4, 2, 4, 4, 2]  # no GPU here: no measurement is made up


def gradcam_on(scheduler, adapter, inputs):
    from cnnviz_core import get_registry
    from cnnviz_core.targets import parse_targets

    cls = get_registry().method("gradcam")
    method = cls(adapter, cls.make_params(batch_size=4), scheduler)
    return method.run(inputs, parse_targets(None, len(inputs), adapter.num_classes, adapter.labels))


def oom_on_the_gpu(adapter, scheduler, monkeypatch):
    """The model 'runs out of memory' whenever the scheduler says it is on a GPU
    (the method's one-off checks before its batches ran on a CPU run first)."""
    forward = adapter.module.forward

    def guarded(*args, **kwargs):
        if scheduler.device.is_cuda:
            raise FakeOOM("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(adapter.module, "forward", guarded)


def test_out_of_memory_at_batch_one_under_auto_goes_on_on_the_cpu(monkeypatch):
    from conftest import small_torch_adapter

    from cnnviz_core.errors import MethodWarning

    adapter = small_torch_adapter()
    inputs = np.random.default_rng(1).normal(size=(6, 3, 32, 32)).astype(np.float32)
    expected = gradcam_on(make_scheduler(device="cpu"), adapter, inputs)
    scheduler = make_scheduler(inventory=one_gpu(), oom_check=fake_oom_check, memory=FakeMemory(GiB, 10 * GiB))
    assert scheduler.device_name == "cuda:0" and scheduler.auto
    moved = []
    scheduler.cpu_fallback = lambda: moved.append(adapter.device)  # the placement's own model moves, once
    oom_on_the_gpu(adapter, scheduler, monkeypatch)
    with pytest.warns(MethodWarning, match="out of memory on cuda:0.*on the CPU"):
        result = gradcam_on(scheduler, adapter, inputs)
    assert moved == ["cpu"] and scheduler.device_name == "cpu"
    assert scheduler.backoffs == [2]  # the probe of 2, then 1, then the CPU
    assert np.array_equal(result.maps, expected.maps) and np.array_equal(result.classes, expected.classes)


def test_out_of_memory_at_batch_one_on_an_explicit_gpu_says_what_to_do(monkeypatch):
    from conftest import small_torch_adapter

    adapter = small_torch_adapter()
    inputs = np.zeros((3, 3, 32, 32), np.float32)
    gradcam_on(make_scheduler(device="cpu"), adapter, inputs)  # the checks before the batches, done once per model
    for device, hook in (("cuda:0", True), ("auto", False)):  # explicit GPU; auto, but no owner to move the model
        scheduler = make_scheduler(device=device, inventory=one_gpu(), oom_check=fake_oom_check)
        moved = []
        if hook:
            scheduler.cpu_fallback = lambda: moved.append(True)
        with monkeypatch.context() as patch:
            oom_on_the_gpu(adapter, scheduler, patch)
            with pytest.raises(OutOfMemoryError, match=r"--device auto.*--device cpu") as info:
                gradcam_on(scheduler, adapter, inputs)
        assert isinstance(info.value.__cause__, FakeOOM)
        assert moved == [] and scheduler.device_name == "cuda:0"


def test_fitting_batch_keeps_the_margin_and_its_bounds():
    from cnnviz_core.memory_budget import MARGIN, fitting_batch

    assert fitting_batch(100, 1000, 64) == int(1000 * (1 - MARGIN)) // 100
    assert fitting_batch(0, 1000, 64) == 64 and fitting_batch(10**9, 1, 64) == 1
    assert fitting_batch(1, 10**12, 7) == 7


def test_a_run_under_auto_moves_its_model_to_the_cpu_on_oom_and_puts_it_back(monkeypatch):
    """cnnviz_core.run places the model, and gives the scheduler the move to
    the CPU; 'cuda:0' is played by torch's 'cpu:0' (a real move on this machine)."""
    import cnnviz_core
    from conftest import small_torch_adapter

    from cnnviz_core.errors import MethodWarning

    adapter = small_torch_adapter()
    inputs = np.random.default_rng(2).normal(size=(5, 3, 32, 32)).astype(np.float32)
    expected = cnnviz_core.run("gradcam", adapter, inputs, device="cpu", normalized=True)  # also the checks done once per model
    moves, move = [], adapter.to

    def recorded(device):
        moves.append(device)
        return move("cpu:0" if device == "cuda:0" else device)

    monkeypatch.setattr(adapter, "to", recorded)
    scheduler = make_scheduler(inventory=one_gpu(), oom_check=fake_oom_check, memory=FakeMemory(GiB, 10 * GiB))
    oom_on_the_gpu(adapter, scheduler, monkeypatch)
    with pytest.warns(MethodWarning, match="on the CPU"):
        result = cnnviz_core.run("gradcam", adapter, inputs, scheduler=scheduler, normalized=True)
    assert moves == ["cuda:0", "cpu", "cpu"]  # placed on the GPU, moved at the OOM, put back where it was
    assert adapter.device == "cpu" and np.array_equal(result.maps, expected.maps)
