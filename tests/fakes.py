"""A fake NVML installed with monkeypatch: the pynvml functions diag calls, answering from per-GPU records."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

MIB = 1024 * 1024
GIB = 1024 * MIB
NO_SUCH_PID = 2**31 - 1  # above any Linux pid_max


def answer(value: Any) -> Any:
    """A fake NVML answer: an exception instance is raised, anything else returned."""
    if isinstance(value, BaseException):
        raise value
    return value


@dataclass
class FakeGpu:
    """What NVML answers for one GPU; an exception instance as a value means NVML raises it."""

    name: Any = "NVIDIA A100-SXM4-80GB"
    uuid: Any = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: Any = "00000000:07:00.0"
    memory: Any = field(default_factory=lambda: SimpleNamespace(total=80 * GIB, used=0))
    compute_capability: Any = (8, 0)
    compute_processes: Any = ()
    graphics_processes: Any = ()
    mig_mode: Any = (0, 0)
    mig_slots: Any = ()  # one entry per slot: a uuid, or an exception for an empty slot
    max_mig_devices: Any = 7
    retired_pages_pending: Any = 0
    remapped_rows: Any = (0, 0, 0, 0)


@dataclass(frozen=True)
class MigHandle:
    gpu: int
    slot: int


class FakeNvml:
    """The pynvml functions read_node calls, answering from per-GPU FakeGpu records."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.init_error: BaseException | None = None
        self.driver_version: Any = "550.54.15"
        self.cuda_driver_version: Any = 12040
        self.process_names: dict[int, Any] = {}
        self.p2p: dict[tuple[int, int], Any] = {}
        self.p2p_indices: list[Any] = []
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        for name in dir(type(self)):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def nvmlInit(self) -> None:
        self.calls.append("init")
        answer(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return answer(self.gpus[handle].name)

    def nvmlDeviceGetUUID(self, handle: int | MigHandle) -> Any:
        if isinstance(handle, MigHandle):
            return answer(self.gpus[handle.gpu].mig_slots[handle.slot])
        return answer(self.gpus[handle].uuid)

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        return SimpleNamespace(busId=answer(self.gpus[handle].bus_id))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return answer(self.gpus[handle].memory)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> Any:
        return answer(self.gpus[handle].compute_capability)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> Any:
        return list(answer(self.gpus[handle].compute_processes))

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> Any:
        return list(answer(self.gpus[handle].graphics_processes))

    def nvmlSystemGetProcessName(self, pid: int) -> Any:
        return answer(self.process_names.get(pid, pynvml.NVMLError_NotFound()))

    def nvmlDeviceGetMigMode(self, handle: int) -> Any:
        return list(answer(self.gpus[handle].mig_mode))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: int) -> Any:
        return answer(self.gpus[handle].max_mig_devices)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: int, slot: int) -> MigHandle:
        slots = self.gpus[handle].mig_slots
        if slot >= len(slots) or isinstance(slots[slot], pynvml.NVMLError_NotFound):
            raise pynvml.NVMLError_NotFound()
        return MigHandle(handle, slot)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: int) -> Any:
        return answer(self.gpus[handle].retired_pages_pending)

    def nvmlDeviceGetRemappedRows(self, handle: int) -> Any:
        return answer(self.gpus[handle].remapped_rows)

    def nvmlSystemGetDriverVersion(self) -> Any:
        return answer(self.driver_version)

    def nvmlSystemGetCudaDriverVersion(self) -> Any:
        return answer(self.cuda_driver_version)

    def nvmlDeviceGetP2PStatus(self, first: int, second: int, p2p_index: Any) -> Any:
        self.p2p_indices.append(p2p_index)
        if not isinstance(p2p_index, int):
            # What ctypes does with a non-integer argument on the real library.
            raise ctypes.ArgumentError(f"argument 3: don't know how to convert {p2p_index!r}")
        return answer(self.p2p.get((first, second), pynvml.NVML_P2P_STATUS_OK))
