"""Which GPUs a run uses: `--gpus` and CUDA_VISIBLE_DEVICES, read the way nvidia-smi and CUDA read them.

Two readings of the same tokens are kept apart on purpose. ``resolve_selection`` says which physical GPUs the
user meant (indices as nvidia-smi numbers them). ``cuda_enumeration`` and ``simulated_cuda_view`` say what
CUDA will actually show the process, where an index means CUDA's own order (fastest first unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, pytorch #86539) and an invalid entry hides itself and every entry after it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence

from diag.topology.records import CudaDevice, CudaView, Gpu, Node, SelectedGpu, Selection

_INDEX = re.compile(r"\d+")
_GPU_UUID = re.compile(r"GPU-[0-9a-fA-F][0-9a-fA-F-]*")
_MIG_UUID = re.compile(r"MIG-[0-9a-zA-Z][0-9a-zA-Z/-]*")

PCI_BUS_ID = "PCI_BUS_ID"
FASTEST_FIRST = "FASTEST_FIRST"


def parse_gpus(value: str) -> tuple[str, ...]:
    """Parse a `--gpus` value: comma-separated nvidia-smi indices, `GPU-…` UUIDs (or unique prefixes), `MIG-…`."""
    tokens = tuple(t.strip() for t in value.split(","))
    expected = "expected comma-separated GPU indices as nvidia-smi numbers them (4,5,6,7) or GPU-/MIG- UUIDs"
    if not value.strip():
        raise argparse.ArgumentTypeError(f"empty value {value!r}: {expected}")
    for token in tokens:
        if not (_INDEX.fullmatch(token) or _GPU_UUID.fullmatch(token) or _MIG_UUID.fullmatch(token)):
            raise argparse.ArgumentTypeError(f"{value!r} has {token!r}: {expected}")
    seen: set[str] = set()
    for token in tokens:
        key = str(int(token)) if token.isdigit() else token.lower()
        if key in seen:
            raise argparse.ArgumentTypeError(f"{value!r} names {token!r} twice: each GPU may be selected once")
        seen.add(key)
    return tuple(str(int(t)) if t.isdigit() else t for t in tokens)


def split_visible_devices(value: str) -> tuple[str, ...]:
    """Split a CUDA_VISIBLE_DEVICES value into its entries, as CUDA reads it (commas, surrounding blanks)."""
    return tuple(t.strip() for t in value.split(",")) if value.strip() else ()


def uuid_matches(node: Node, token: str) -> list[tuple[int, str]]:
    """Every GPU (or MIG instance) a UUID or UUID prefix names, as (nvml_index, full uuid)."""
    wanted = token.lower()
    if wanted.startswith("mig-"):
        return [(g.nvml_index, u) for g in node.gpus for u in g.mig_uuids if u.lower() == wanted]
    return [(g.nvml_index, g.uuid) for g in node.gpus if g.uuid.lower().startswith(wanted)]


def _match_uuid(node: Node, token: str) -> tuple[int, str] | None:
    """The GPU a UUID or unique UUID prefix names; an ambiguous prefix names none (CUDA refuses it too)."""
    hits = uuid_matches(node, token)
    return hits[0] if len(hits) == 1 else None


def _resolve_token(node: Node, token: str, numbering: Sequence[Gpu]) -> SelectedGpu:
    if token.isascii() and token.isdigit():  # "²".isdigit() is true and int("²") raises: a token naming no GPU
        position = int(token)
        if position < len(numbering):
            gpu = numbering[position]
            return SelectedGpu(token, gpu.nvml_index, gpu.uuid)
        return SelectedGpu(token, None, None)
    hit = _match_uuid(node, token)
    return SelectedGpu(token, hit[0], hit[1]) if hit else SelectedGpu(token, None, None)


def resolve_selection(node: Node, gpus: Sequence[str] | None, env: Mapping[str, str]) -> Selection:
    """The GPUs the user meant: `--gpus` first, else CUDA_VISIBLE_DEVICES, else every GPU of the node.

    Indices always mean nvidia-smi's numbering here; whether CUDA agrees is a check of its own.
    """
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    order = env.get("CUDA_DEVICE_ORDER", FASTEST_FIRST) or FASTEST_FIRST
    if gpus is not None:
        origin, tokens = "--gpus", tuple(gpus)
    elif cvd is not None:
        origin, tokens = "CUDA_VISIBLE_DEVICES", split_visible_devices(cvd)
    else:
        entries = tuple(SelectedGpu(str(g.nvml_index), g.nvml_index, g.uuid) for g in node.gpus)
        return Selection("all", entries, cvd, order)
    entries = tuple(_resolve_token(node, t, node.gpus) for t in tokens)
    return Selection(origin, entries, cvd, order)  # type: ignore[arg-type]


def cuda_enumeration(node: Node, order: str) -> tuple[Gpu, ...]:
    """The node's GPUs in the order CUDA numbers them before CUDA_VISIBLE_DEVICES applies.

    PCI_BUS_ID is nvidia-smi's order. FASTEST_FIRST is approximated by compute capability, then memory,
    then bus order; on a node of identical GPUs it is the bus order, as CUDA gives it.
    """
    if order == PCI_BUS_ID:
        return node.gpus

    def speed(gpu: Gpu) -> tuple[tuple[int, int], int, int]:
        return (gpu.compute_capability or (0, 0), gpu.memory_total_mib, -gpu.nvml_index)

    return tuple(sorted(node.gpus, key=speed, reverse=True))


def simulated_cuda_view(node: Node, env: Mapping[str, str], torch_version: str | None) -> CudaView:
    """What torch.cuda would show a process with this environment on this node, by CUDA's rules."""
    numbering = cuda_enumeration(node, env.get("CUDA_DEVICE_ORDER", FASTEST_FIRST))
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    devices: list[CudaDevice] = []
    if cvd is None:
        visible = [(g, g.uuid) for g in numbering]
    else:
        visible = []
        for token in split_visible_devices(cvd):
            entry = _resolve_token(node, token, numbering)
            # CUDA stops at the first entry it cannot use: that entry and all after it are hidden.
            if entry.nvml_index is None or any(g.nvml_index == entry.nvml_index for g, _ in visible):
                break
            visible.append((node.gpu(entry.nvml_index), entry.uuid or ""))
    for cuda_index, (gpu, uuid) in enumerate(visible):
        devices.append(CudaDevice(cuda_index, uuid, gpu.name, gpu.memory_total_mib))
    # One pass over the pairs the node reports (not over every pair of visible GPUs), keeping the reported ones.
    cuda_of = {gpu.nvml_index: cuda_index for cuda_index, (gpu, _) in enumerate(visible)}
    reported = {
        (min(cuda_of[a], cuda_of[b]), max(cuda_of[a], cuda_of[b])): bool(node.p2p_status(a, b))
        for a, b, _ in node.p2p
        if a in cuda_of and b in cuda_of and a != b
    }
    peers = tuple((a, b, ok) for (a, b), ok in sorted(reported.items()))
    return CudaView(torch_version, node.torch_cuda, tuple(devices), peers, None, simulated=True)
