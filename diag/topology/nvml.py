"""The physical view of a node through NVML: every GPU in nvidia-smi order, whatever the process environment.

``read_node`` never raises for a node without usable NVML: it returns a ``Node`` with no GPUs and an
``NvmlUnavailable`` saying why. Optional per-GPU queries that NVML refuses ("Not Supported" and the like)
become ``None`` fields, the way nvidia-smi prints "N/A".
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diag.topology.records import Gpu, GpuProcess, Node, NvmlUnavailable

_MIB = 1024 * 1024


def read_node(hostname: str | None = None) -> Node:
    """Read the node's GPUs, driver and P2P facts through NVML (nvidia-smi's view), or say why not."""
    host = hostname if hostname is not None else socket.gethostname()
    try:
        import pynvml  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        return _unavailable(host, "nvidia-ml-py is not installed (pip install nvidia-ml-py)", str(exc))
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return _unavailable(host, _init_failure_reason(pynvml, exc), _describe(exc))
    try:
        return _read_initialised(pynvml, host)
    except pynvml.NVMLError as exc:
        return _unavailable(host, f"NVML query failed: {exc}", _describe(exc))
    finally:
        _shutdown(pynvml)


def _unavailable(host: str, reason: str, detail: str) -> Node:
    return Node(source="nvml", hostname=host, gpus=(), nvml_error=NvmlUnavailable(reason, detail))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _init_failure_reason(nv: Any, exc: BaseException) -> str:
    """One line, in user terms, for why nvmlInit failed."""
    if isinstance(exc, nv.NVMLError_LibraryNotFound):
        return "NVML library not found: no NVIDIA driver is installed (not a GPU node?)"
    if isinstance(exc, nv.NVMLError_DriverNotLoaded):
        return "NVIDIA driver is installed but not loaded (kernel module missing or GPUs not attached)"
    if isinstance(exc, nv.NVMLError_NoPermission):
        return "no permission to use the NVIDIA driver (check access to /dev/nvidia*)"
    if isinstance(exc, nv.NVMLError_LibRmVersionMismatch):
        return "NVIDIA driver/library version mismatch (driver upgraded without reboot?)"
    return f"NVML could not be initialised: {exc}"


def _shutdown(nv: Any) -> None:
    # A failing shutdown must not hide the node already read (or the error being raised).
    with contextlib.suppress(nv.NVMLError):
        nv.nvmlShutdown()


def _read_initialised(nv: Any, host: str) -> Node:
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    return Node(
        source="nvml",
        hostname=host,
        gpus=tuple(_read_gpu(nv, i, h) for i, h in enumerate(handles)),
        driver_version=_optional_text(nv, nv.nvmlSystemGetDriverVersion),
        cuda_driver_version=_cuda_driver_version(nv),
        p2p=_p2p_matrix(nv, handles),
    )


def _optional(nv: Any, query: Callable[..., Any], *args: Any) -> Any:
    """The query's answer, or None where NVML refuses it (nvidia-smi's "N/A")."""
    try:
        return query(*args)
    except nv.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    """NVML strings are bytes in older nvidia-ml-py releases and str in newer ones."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.strip("\x00").strip()


def _optional_text(nv: Any, query: Callable[..., Any], *args: Any) -> str | None:
    value = _optional(nv, query, *args)
    return None if value is None else _text(value)


def _read_gpu(nv: Any, index: int, handle: Any) -> Gpu:
    """One GPU: the nvidia-smi --query-gpu fields plus the health flags a pre-flight cares about."""
    memory = nv.nvmlDeviceGetMemoryInfo(handle)
    mig_mode = _mig_mode(nv, handle)
    remapped = _optional(nv, nv.nvmlDeviceGetRemappedRows, handle)
    return Gpu(
        nvml_index=index,
        uuid=_text(nv.nvmlDeviceGetUUID(handle)),
        pci_bus_id=_text(nv.nvmlDeviceGetPciInfo(handle).busId),
        name=_text(nv.nvmlDeviceGetName(handle)),
        memory_total_mib=int(memory.total) // _MIB,
        memory_used_mib=int(memory.used) // _MIB,
        processes=_processes(nv, handle),
        compute_capability=_compute_capability(nv, handle),
        mig_mode=mig_mode,
        mig_uuids=_mig_uuids(nv, handle) if mig_mode else (),
        retired_pages_pending=_retired_pages_pending(nv, handle),
        remapped_rows_pending=None if remapped is None else bool(remapped[2]),
        remapping_failed=None if remapped is None else bool(remapped[3]),
    )


def _compute_capability(nv: Any, handle: Any) -> tuple[int, int] | None:
    """nvidia-smi --query-gpu=compute_cap as (major, minor)."""
    value = _optional(nv, nv.nvmlDeviceGetCudaComputeCapability, handle)
    return None if value is None else (int(value[0]), int(value[1]))


def _mig_mode(nv: Any, handle: Any) -> bool | None:
    """nvidia-smi --query-gpu=mig.mode.current; None on GPUs without MIG."""
    modes = _optional(nv, nv.nvmlDeviceGetMigMode, handle)
    return None if modes is None else bool(modes[0] == nv.NVML_DEVICE_MIG_ENABLE)


def _mig_uuids(nv: Any, handle: Any) -> tuple[str, ...]:
    """UUIDs of the MIG instances that exist on the GPU (nvidia-smi -L's "MIG-…" lines)."""
    count = _optional(nv, nv.nvmlDeviceGetMaxMigDeviceCount, handle)
    uuids: list[str] = []
    for slot in range(count or 0):
        # Unpopulated slots answer NotFound; they are expected, not errors.
        mig_handle = _optional(nv, nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
        uuid = None if mig_handle is None else _optional_text(nv, nv.nvmlDeviceGetUUID, mig_handle)
        if uuid:
            uuids.append(uuid)
    return tuple(uuids)


def _retired_pages_pending(nv: Any, handle: Any) -> bool | None:
    """nvidia-smi --query-gpu=retired_pages.pending (pre-Ampere)."""
    value = _optional(nv, nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    return None if value is None else bool(value == nv.NVML_FEATURE_ENABLED)


def _processes(nv: Any, handle: Any) -> tuple[GpuProcess, ...]:
    """nvidia-smi's "Processes" table for one GPU: compute and graphics, one entry per pid."""
    used: dict[int, int | None] = {}
    for query in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
        for info in _optional(nv, query, handle) or ():
            pid = int(info.pid)
            mem = None if info.usedGpuMemory is None else int(info.usedGpuMemory) // _MIB
            if used.get(pid) is None:
                used[pid] = mem
    return tuple(GpuProcess(pid=pid, name=_process_name(nv, pid), used_mib=mib) for pid, mib in used.items())


def _process_name(nv: Any, pid: int) -> str:
    """nvidia-smi's "Process name"; /proc/<pid>/comm when NVML cannot name it, else "?"."""
    name = _optional_text(nv, nv.nvmlSystemGetProcessName, pid)
    if name:
        return name
    # In a container NVML may report host pids, so /proc can name a different process or none at all.
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip() or "?"
    except OSError:
        return "?"


def _cuda_driver_version(nv: Any) -> str | None:
    """nvidia-smi's "CUDA Version": NVML's 12040 is "12.4"."""
    value = _optional(nv, nv.nvmlSystemGetCudaDriverVersion)
    if value is None:
        return None
    return f"{int(value) // 1000}.{int(value) % 1000 // 10}"


def _p2p_read_index(nv: Any) -> int:
    # Some nvidia-ml-py releases define NVML_P2P_CAPS_INDEX_READ as the tuple (0,), which ctypes rejects.
    index = nv.NVML_P2P_CAPS_INDEX_READ
    return int(index[0]) if isinstance(index, tuple) else int(index)


def _p2p_matrix(nv: Any, handles: list[Any]) -> tuple[tuple[int, int, bool | None], ...]:
    """Peer read support for each unordered pair (nvidia-smi topo -p2p r); None where NVML cannot tell."""
    read = _p2p_read_index(nv)
    pairs: list[tuple[int, int, bool | None]] = []
    for a, first in enumerate(handles):
        for b in range(a + 1, len(handles)):
            status = _optional(nv, nv.nvmlDeviceGetP2PStatus, first, handles[b], read)
            pairs.append((a, b, None if status is None else bool(status == nv.NVML_P2P_STATUS_OK)))
    return tuple(pairs)
