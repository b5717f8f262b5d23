"""Device inventory: each CUDA device with its free memory, and the CPU.

The inventory is a plain value so that tests inject one describing GPUs this
machine does not have."""

from __future__ import annotations

import dataclasses

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    name: str  # "cpu" or "cuda:N"
    total_memory: int | None = None  # bytes; None for the CPU
    free_memory: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")


@dataclasses.dataclass(frozen=True)
class DeviceInventory:
    devices: tuple[DeviceInfo, ...]

    @classmethod
    def detect(cls) -> "DeviceInventory":
        devices = []
        try:
            import torch

            if torch.cuda.is_available():
                for index in range(torch.cuda.device_count()):
                    free, total = torch.cuda.mem_get_info(index)
                    devices.append(DeviceInfo(f"cuda:{index}", total, free))
        except Exception:  # a broken CUDA install must not stop CPU work
            devices = []
        devices.append(DeviceInfo("cpu", None, None))
        return cls(tuple(devices))

    @property
    def cuda(self) -> list[DeviceInfo]:
        return [d for d in self.devices if d.is_cuda]

    def choose(self, request: str | None = "auto") -> DeviceInfo:
        """``auto``: the CUDA device with the most free memory, else the CPU."""
        request = (request or "auto").strip().lower()
        if request == "auto":
            cuda = self.cuda
            return max(cuda, key=lambda d: d.free_memory or 0) if cuda else self.get("cpu")
        if request == "cuda":
            request = "cuda:0"
        for device in self.devices:
            if device.name == request:
                return device
        available = ", ".join(d.name for d in self.devices)
        raise InputError(f"device {request!r} is not available here; choose auto or one of: {available}")

    def get(self, name: str) -> DeviceInfo:
        return next(d for d in self.devices if d.name == name)

