"""Frozen records for a GPU node: what NVML reports (physical view) and what CUDA shows a process (logical view).

Everything downstream of the providers reads these records and cannot tell a real node from a simulated or
replayed one except through ``Node.source``. "Not supported" is ``None``, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Source = Literal["nvml", "simulated", "file"]


def uuid_key(uuid: str) -> str:
    """The part of a UUID both views agree on: NVML says `MIG-…` for a MIG instance, torch prints it bare."""
    lowered = uuid.lower()
    for prefix in ("gpu-", "mig-"):
        if lowered.startswith(prefix):
            return lowered[len(prefix) :]
    return lowered


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU (nvidia-smi's "Processes" table)."""

    pid: int
    name: str
    used_mib: int | None  # None where NVML cannot tell (some containers)


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as nvidia-smi numbers it (PCI bus order)."""

    nvml_index: int
    uuid: str  # nvidia-smi --query-gpu=uuid, "GPU-…"
    pci_bus_id: str  # nvidia-smi --query-gpu=pci.bus_id
    name: str  # nvidia-smi --query-gpu=name
    memory_total_mib: int
    memory_used_mib: int
    processes: tuple[GpuProcess, ...] = ()
    compute_capability: tuple[int, int] | None = None
    mig_mode: bool | None = None  # current MIG mode; None: not supported
    mig_uuids: tuple[str, ...] = ()  # "MIG-…" instances on this GPU
    retired_pages_pending: bool | None = None  # pre-Ampere page retirement awaiting a reset
    remapped_rows_pending: bool | None = None  # Ampere+ row remapping awaiting a reset
    remapping_failed: bool | None = None

    @property
    def memory_free_mib(self) -> int:
        return max(self.memory_total_mib - self.memory_used_mib, 0)


@dataclass(frozen=True)
class CudaDevice:
    """One ordinal as torch.cuda numbers it inside a process (after CUDA_VISIBLE_DEVICES)."""

    cuda_index: int
    uuid: str  # normalised "GPU-…" or "MIG-…"
    name: str
    memory_total_mib: int


@dataclass(frozen=True)
class CudaView:
    """What a process with the applied environment sees through torch.cuda.

    ``error`` says why the view could not be taken (torch missing, CPU-only build, probe failed); the
    devices are then empty and the checks decide what that means.
    """

    torch_version: str | None
    torch_cuda: str | None  # torch.version.cuda; None for a CPU-only build
    devices: tuple[CudaDevice, ...] = ()
    peer_access: tuple[tuple[int, int, bool], ...] = ()  # (cuda_index, cuda_index, can access)
    error: str | None = None
    simulated: bool = False


@dataclass(frozen=True)
class NvmlUnavailable:
    """Why the physical view could not be read (no library, driver not loaded, no permission)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Node:
    """A GPU node: its GPUs in nvidia-smi order and the driver facts that apply to all of them."""

    source: Source
    hostname: str
    gpus: tuple[Gpu, ...]
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the newest CUDA the driver supports, nvidia-smi's "CUDA Version"
    p2p: tuple[tuple[int, int, bool | None], ...] = ()  # (nvml_index, nvml_index, peer read supported)
    nvml_error: NvmlUnavailable | None = None
    spec: str | None = None  # the --simulate spec this node was made from
    torch_cuda: str | None = None  # recorded torch CUDA build of a simulated or replayed node
    # The torch version `python -m diag topology` found where it captured the node (the eval environment when diag
    # is installed there); None when the capture does not record it. With it, a null torch_cuda means that torch
    # was not a CUDA build; without it, a null torch_cuda says nothing about the eval environment's torch.
    torch_version: str | None = None

    @property
    def torch_recorded(self) -> bool:
        """Whether this node says which torch the eval runs with: always for a simulated one (a CUDA build is
        assumed), for a replayed one when the capture recorded it, never for the real node (the probe says)."""
        if self.source == "simulated":
            return True
        return self.source == "file" and (self.torch_cuda is not None or self.torch_version is not None)

    @property
    def simulated(self) -> bool:
        return self.source != "nvml"

    def gpu(self, nvml_index: int) -> Gpu:
        return self.gpus[nvml_index]

    @cached_property
    def _p2p_by_pair(self) -> dict[tuple[int, int], bool | None]:
        return {(min(a, b), max(a, b)): ok for a, b, ok in self.p2p}

    def p2p_status(self, a: int, b: int) -> bool | None:
        """Whether GPUs a and b (nvml indices) can read each other's memory; None: not reported."""
        return self._p2p_by_pair.get((min(a, b), max(a, b)))

    def pairs_without_p2p(self, indices: Iterable[int], limit: int) -> tuple[tuple[tuple[int, int], ...], int]:
        """The pairs of `indices` (nvml) reported without peer access: the first `limit` in order, and how many.

        One pass over the pairs the node reports, never over every pair of the selection: the time is linear in
        what NVML (or the file) listed and the memory in `limit`, however many GPUs are selected.
        """
        chosen = set(indices)
        shown: list[tuple[int, int]] = []
        count = 0
        for pair, ok in self._p2p_by_pair.items():
            if ok is False and pair[0] in chosen and pair[1] in chosen and pair[0] != pair[1]:
                count += 1
                if len(shown) < limit:
                    shown.append(pair)
                elif pair < max(shown):  # keep the first `limit` pairs in order, whatever order they were listed in
                    shown[shown.index(max(shown))] = pair
        return tuple(sorted(shown)), count


@dataclass(frozen=True)
class SelectedGpu:
    """One entry of the selection: the token as the user wrote it and the GPU it names, if any."""

    token: str  # "4", "GPU-8f3…", "MIG-…"
    nvml_index: int | None  # None: the node has no such GPU
    uuid: str | None  # the UUID CUDA will report for it ("MIG-…" for a MIG instance)


@dataclass(frozen=True)
class Selection:
    """The GPUs a run uses, in the order CUDA will number them (cuda:0 first)."""

    origin: Literal["--gpus", "CUDA_VISIBLE_DEVICES", "all"]
    entries: tuple[SelectedGpu, ...]
    cuda_visible_devices: str | None  # the value in force for the run; None: unset
    cuda_device_order: str  # CUDA_DEVICE_ORDER in force ("FASTEST_FIRST" when unset)

    @property
    def found(self) -> tuple[SelectedGpu, ...]:
        return tuple(e for e in self.entries if e.nvml_index is not None)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(e.token for e in self.entries if e.nvml_index is None)

    @property
    def nvml_indices(self) -> tuple[int, ...]:
        return tuple(e.nvml_index for e in self.entries if e.nvml_index is not None)


@dataclass(frozen=True)
class Topology:
    """The node joined with the process's CUDA view and the GPUs the run selected."""

    node: Node
    cuda: CudaView
    selection: Selection
