"""What the environment checks compute: busy GPUs and free alternatives, CUDA versions, torch's view."""

from __future__ import annotations

from dataclasses import dataclass

from diag.topology.records import Gpu, Node, Topology, uuid_key

# An idle GPU shows a few hundred MiB used (driver, persistence mode); more than this with no process listed
# means a process NVML cannot see, typically one in another container.
UNLISTED_USE_MIB = 1024


def describe_gpu(gpu: Gpu) -> str:
    return f"GPU {gpu.nvml_index} ({gpu.name}, {gpu.uuid})"


def busy_reasons(gpu: Gpu) -> list[str]:
    """Why a GPU is not free, one phrase per process: `pid 4242 (python, 30512 MiB)`."""
    reasons = []
    for process in gpu.processes:
        used = f"{process.used_mib} MiB" if process.used_mib is not None else "memory unknown"
        reasons.append(f"pid {process.pid} ({process.name}, {used})")
    if not reasons and gpu.memory_used_mib > UNLISTED_USE_MIB:
        reasons.append(f"{gpu.memory_used_mib} MiB used by a process NVML does not list (another container?)")
    return reasons


def freest_gpus(node: Node, count: int) -> list[Gpu]:
    """Up to `count` GPUs with no other process, least memory used first, then in nvidia-smi order."""
    free = [g for g in node.gpus if not busy_reasons(g) and not g.mig_mode]
    return sorted(free, key=lambda g: (g.memory_used_mib, g.nvml_index))[:count]


def parse_cuda_version(text: str | None) -> tuple[int, int] | None:
    """ "12.4" -> (12, 4); None or junk -> None."""
    if not text:
        return None
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


@dataclass(frozen=True)
class ViewMismatch:
    """How torch's CUDA view differs from the GPUs the user selected."""

    unseen: tuple[Gpu, ...]  # selected but not visible to torch
    extra: tuple[str, ...]  # visible to torch but not selected: "cuda:3 (GPU-…)"
    order: tuple[tuple[int, Gpu, Gpu], ...]  # (cuda_index, GPU seen there, GPU the selection puts there)


def compare_view(topology: Topology) -> ViewMismatch:
    """Join torch's ordinals to the selection by UUID (MIG instances by their `MIG-…` UUID)."""
    node, selection = topology.node, topology.selection
    by_uuid: dict[str, Gpu] = {}
    for gpu in node.gpus:
        by_uuid[uuid_key(gpu.uuid)] = gpu
        for mig in gpu.mig_uuids:
            by_uuid[uuid_key(mig)] = gpu
    expected = list(dict.fromkeys(uuid_key(e.uuid or "") for e in selection.found))  # a GPU named twice counts once
    seen = [uuid_key(d.uuid) for d in topology.cuda.devices]
    unseen = tuple(by_uuid[u] for u in expected if u not in seen)
    extra = tuple(
        f"cuda:{d.cuda_index} = {describe_gpu(by_uuid[uuid_key(d.uuid)]) if uuid_key(d.uuid) in by_uuid else d.uuid}"
        for d in topology.cuda.devices
        if uuid_key(d.uuid) not in expected
    )
    order: list[tuple[int, Gpu, Gpu]] = []
    if not unseen and not extra:
        for cuda_index, (got, want) in enumerate(zip(seen, expected, strict=False)):
            if got != want:
                order.append((cuda_index, by_uuid[got], by_uuid[want]))
    return ViewMismatch(unseen, extra, tuple(order))


def is_mixed(node: Node) -> bool:
    return len({g.name for g in node.gpus}) > 1
