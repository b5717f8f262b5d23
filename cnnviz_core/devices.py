"""Device inventory: the CUDA devices and the CPU, and their memory on demand.

Listing devices never creates a CUDA context: the list comes from the device
count (NVML or torch), and free memory is asked lazily, only of the devices a
choice actually compares. NVML (``pynvml`` / ``nvidia-ml-py``, when installed)
answers without a context; without it torch's ``mem_get_info`` would create a
context on each device it is asked about, so then memory is never compared
across GPUs. The detected inventory is cached per process.

The inventory is a plain value so that tests inject one describing GPUs this
machine does not have."""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Optional, Tuple

from .errors import InputError

# name -> (free, total) bytes, or None when it cannot tell
MemoryProbe = Callable[[str], Optional[Tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    name: str  # "cpu" or "cuda:N"
    total_memory: int | None = None  # bytes; None for the CPU or when not asked yet
    free_memory: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")


@dataclasses.dataclass(frozen=True)
class DeviceInventory:
    """``probe`` answers a device's memory when a choice needs it;
    ``probe_is_cheap`` says it may be asked of every device (NVML, or a
    test's fake) rather than only of the one device chosen (torch)."""

    devices: tuple[DeviceInfo, ...]
    probe: MemoryProbe | None = dataclasses.field(default=None, compare=False, repr=False)
    probe_is_cheap: bool = dataclasses.field(default=True, compare=False, repr=False)

    @classmethod
    def detect(cls, refresh: bool = False) -> "DeviceInventory":
        """The devices of this process, listed once (``refresh`` lists again)."""
        global _detected
        with _detect_lock:
            if _detected is None or refresh:
                _detected = _detect()
            return _detected

    @property
    def cuda(self) -> list[DeviceInfo]:
        return [d for d in self.devices if d.is_cuda]

    def memory(self, name: str) -> tuple[int, int] | None:
        """(free, total) bytes of a device: as given, else asked of the probe."""
        known = self.get(name)
        if known.free_memory is not None:
            return known.free_memory, known.total_memory or known.free_memory
        if self.probe is None or not known.is_cuda:
            return None
        try:
            return self.probe(name)
        except Exception:  # a device that cannot answer is just not compared
            return None

    def choose(self, request: str | None = "auto", prefer: str | None = None) -> DeviceInfo:
        """``auto``: the GPU ``prefer`` names (where the model already is), else
        the only GPU, else the GPU with the most free memory when memory can be
        compared without creating contexts (else the first GPU), else the CPU."""
        request = (request or "auto").strip().lower()
        if request == "auto":
            return self._auto(prefer)
        if request == "cuda":
            request = "cuda:0"
        for device in self.devices:
            if device.name == request:
                return device
        available = ", ".join(d.name for d in self.devices)
        raise InputError(f"device {request!r} is not available here; choose auto or one of: {available}")

    def _auto(self, prefer: str | None) -> DeviceInfo:
        cuda = self.cuda
        if not cuda:
            return self.get("cpu")
        preferred = _normalized(prefer)
        for device in cuda:
            if device.name == preferred:
                return device
        if len(cuda) == 1:
            return cuda[0]
        if not self.probe_is_cheap and any(d.free_memory is None for d in cuda):
            return cuda[0]
        measured = []
        for device in cuda:
            memory = self.memory(device.name)
            free, total = memory if memory is not None else (None, None)
            measured.append(DeviceInfo(device.name, total, free))
        return max(measured, key=lambda d: d.free_memory or 0)

    def get(self, name: str) -> DeviceInfo:
        for device in self.devices:
            if device.name == name:
                return device
        raise InputError(f"device {name!r} is not in the inventory ({', '.join(d.name for d in self.devices)})")


_detected: DeviceInventory | None = None
_detect_lock = threading.Lock()


def _normalized(device: str | None) -> str | None:
    if device is None:
        return None
    device = str(device).strip().lower()
    return "cuda:0" if device == "cuda" else device


def _detect() -> DeviceInventory:
    cuda: list[DeviceInfo] = []
    probe, cheap = None, True
    try:
        import torch

        if torch.cuda.is_available():  # counts devices; creates no context
            cuda = [DeviceInfo(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install must not stop CPU work
        cuda = []
    if cuda:
        probe = _nvml_probe(len(cuda))
        if probe is None:
            probe, cheap = _torch_probe, False
    return DeviceInventory((*cuda, DeviceInfo("cpu")), probe, cheap)


def _torch_probe(name: str) -> tuple[int, int]:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(name))  # creates a context on that device
    return int(free), int(total)


def _nvml_probe(count: int) -> MemoryProbe | None:
    """A probe through NVML, or None when NVML is missing. NVML numbers devices
    by PCI bus rather than as CUDA does (and ignores CUDA_VISIBLE_DEVICES), so
    CUDA indices are matched to NVML handles by UUID, on the first question."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    handles: dict[str, object] = {}

    def probe(name: str) -> tuple[int, int]:
        if not handles:
            handles.update(_nvml_handles(pynvml, count))
        info = pynvml.nvmlDeviceGetMemoryInfo(handles[name])
        return int(info.free), int(info.total)

    return probe


def _nvml_handles(pynvml, count: int) -> dict[str, object]:
    import torch

    by_uuid = {}
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        by_uuid[uuid.lower().removeprefix("gpu-")] = handle
    # device properties are attributes the driver reports; they allocate nothing on the device
    return {f"cuda:{i}": by_uuid[str(torch.cuda.get_device_properties(i).uuid).lower().removeprefix("gpu-")]
            for i in range(count)}
