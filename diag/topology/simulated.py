"""A simulated node from `--simulate NxNAME-MEMGB` (groups joined by `+` make a node of mixed GPUs).

The records look like NVML's: nvidia-smi names, PCI bus ids in bus order, stable UUIDs derived from the spec,
idle GPUs with no processes, every pair able to reach its peers. Replay a captured node (`--topology`) to
simulate busy GPUs or missing peer access.
"""

from __future__ import annotations

import argparse
import re
import uuid
from dataclasses import dataclass

from diag.topology.records import Gpu, Node

MAX_GPUS = 256
_GROUP = re.compile(r"(?P<count>\d+)x(?P<name>[A-Za-z][A-Za-z0-9]*)-(?P<mem>\d+)GB", re.IGNORECASE)
# name as nvidia-smi prints it, compute capability; unknown names get "NVIDIA NAME" and no capability.
_KNOWN: dict[str, tuple[str, tuple[int, int]]] = {
    "H200": ("NVIDIA H200", (9, 0)),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0)),
    "H800": ("NVIDIA H800", (9, 0)),
    "A100": ("NVIDIA A100-SXM4-{mem}GB", (8, 0)),
    "A800": ("NVIDIA A800-SXM4-{mem}GB", (8, 0)),
    "L40S": ("NVIDIA L40S", (8, 9)),
    "L40": ("NVIDIA L40", (8, 9)),
    "L4": ("NVIDIA L4", (8, 9)),
    "A6000": ("NVIDIA RTX A6000", (8, 6)),
    "A40": ("NVIDIA A40", (8, 6)),
    "A10": ("NVIDIA A10", (8, 6)),
    "RTX4090": ("NVIDIA GeForce RTX 4090", (8, 9)),
    "RTX3090": ("NVIDIA GeForce RTX 3090", (8, 6)),
    "V100": ("Tesla V100-SXM2-{mem}GB", (7, 0)),
    "T4": ("Tesla T4", (7, 5)),
    "P40": ("Tesla P40", (6, 1)),
}
SIMULATED_DRIVER = "550.54.15"
SIMULATED_CUDA = "12.4"
EXPECTED = "expected NxNAME-MEMGB such as 8xA100-80GB, 1xP40-24GB, or groups joined by + (4xA100-80GB+4xV100-32GB)"


@dataclass(frozen=True)
class GpuGroup:
    count: int
    name: str
    memory_gb: int


def parse_spec(value: str) -> tuple[GpuGroup, ...]:
    """Parse a `--simulate` value into its groups of identical GPUs."""
    groups: list[GpuGroup] = []
    for part in value.split("+"):
        match = _GROUP.fullmatch(part.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"{value!r} is not a node: {EXPECTED}")
        group = GpuGroup(int(match["count"]), match["name"].upper(), int(match["mem"]))
        if group.count < 1 or group.memory_gb < 1:
            raise argparse.ArgumentTypeError(f"{value!r} has {part!r}: count and memory must be 1 or more; {EXPECTED}")
        groups.append(group)
    if sum(g.count for g in groups) > MAX_GPUS:
        raise argparse.ArgumentTypeError(f"{value!r} has more than {MAX_GPUS} GPUs")
    return tuple(groups)


def _gpu(spec: str, nvml_index: int, group: GpuGroup) -> Gpu:
    name, capability = _KNOWN.get(group.name, (f"NVIDIA {group.name}", None))
    total_mib = group.memory_gb * 1024  # an A100-80GB reports 81920 MiB
    return Gpu(
        nvml_index=nvml_index,
        uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'diag-simulated/{spec}/{nvml_index}')}",
        pci_bus_id=f"{nvml_index // 200:08X}:{0x10 + nvml_index % 200:02X}:00.0",
        name=name.format(mem=group.memory_gb),
        memory_total_mib=total_mib,
        memory_used_mib=0,
        compute_capability=capability,
        mig_mode=False if capability and capability >= (8, 0) else None,
        retired_pages_pending=False,
        remapped_rows_pending=False if capability and capability >= (8, 0) else None,
        remapping_failed=False if capability and capability >= (8, 0) else None,
    )


def simulated_node(spec: str, hostname: str = "simulated") -> Node:
    """A node of idle GPUs as the spec describes, numbered in bus order like nvidia-smi."""
    gpus: list[Gpu] = []
    group_of: list[int] = []
    for group_number, group in enumerate(parse_spec(spec)):
        for _ in range(group.count):
            gpus.append(_gpu(spec, len(gpus), group))
            group_of.append(group_number)
    # Peer access needs the same architecture: GPUs of different groups cannot reach each other.
    p2p = tuple((a, b, group_of[a] == group_of[b]) for a in range(len(gpus)) for b in range(a + 1, len(gpus)))
    return Node(
        source="simulated",
        hostname=hostname,
        gpus=tuple(gpus),
        driver_version=SIMULATED_DRIVER,
        cuda_driver_version=SIMULATED_CUDA,
        p2p=p2p,
        spec=spec,
        torch_cuda=SIMULATED_CUDA,
    )
