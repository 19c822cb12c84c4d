"""A node as JSON: what `python -m diag topology` prints and `--topology FILE` replays."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from diag.reader import InputError, describe, fail, field, load_json, name, optional_bool, optional_str, whole
from diag.redact import redact_command_line
from diag.topology.records import CudaDevice, CudaView, Gpu, GpuProcess, Node, NvmlUnavailable, Source, uuid_key

SCHEMA = "diag-topology/1"


def node_to_dict(node: Node) -> dict[str, Any]:
    """The node as plain JSON data, GPUs in nvidia-smi order."""
    return {
        "schema": SCHEMA,
        "source": node.source,
        "hostname": node.hostname,
        "driver_version": node.driver_version,
        "cuda_driver_version": node.cuda_driver_version,
        "torch_cuda": node.torch_cuda,
        "torch_version": node.torch_version,
        "spec": node.spec,
        "nvml_error": asdict(node.nvml_error) if node.nvml_error else None,
        "gpus": [asdict(g) for g in node.gpus],
        "p2p": [list(p) for p in node.p2p],
    }


MAX_GPUS_PER_NODE = 1024  # `--simulate` stops at 256; a captured node of more GPUs than this is not a node
MAX_PROCESSES_PER_GPU = 4096
MAX_MIB = 1 << 40  # a MiB count beyond 1 EiB is not a GPU's
_STRINGS = ("hostname", "driver_version", "cuda_driver_version", "torch_cuda", "torch_version", "spec", "source")
_FLAGS = ("mig_mode", "retired_pages_pending", "remapped_rows_pending", "remapping_failed")


def _mib(where: str, path: tuple[str | int, ...], value: Any) -> int:
    return whole(where, path, value, "a whole number of MiB >= 0", low=0, high=MAX_MIB)


def _object(where: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, path, "an object", value)
    return value


def _list(where: str, path: tuple[str | int, ...], value: Any, what: str, limit: int) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):  # a tuple: the node handed to xdist workers as Python values
        raise fail(where, path, f"a list of {what}", value)
    if len(value) > limit:
        raise InputError(f"{where}: {field(path)}: {len(value):,} {what}, more than the {limit:,} diag reads")
    return value


def _gpu_from_dict(where: str, index: int, data: Any) -> Gpu:
    at: tuple[str | int, ...] = ("gpus", index)
    data = _object(where, at, data)
    for key in ("nvml_index", "uuid", "name", "memory_total_mib"):
        if key not in data:
            raise InputError(f"{where}: {field((*at, key))}: missing")
    uuid = data["uuid"]
    if not isinstance(uuid, str) or not uuid.strip():
        raise fail(where, (*at, "uuid"), 'a UUID string such as "GPU-8f3…"', uuid)
    name = data["name"]
    if not isinstance(name, str):
        raise fail(where, (*at, "name"), "a string", name)
    pci = data.get("pci_bus_id", "")
    if not isinstance(pci, str):
        raise fail(where, (*at, "pci_bus_id"), "a string", pci)
    capability = data.get("compute_capability")
    if capability is not None:
        valid = isinstance(capability, list | tuple) and len(capability) == 2
        valid = valid and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 100 for n in capability)
        if not valid:
            raise fail(where, (*at, "compute_capability"), "a pair [major, minor] such as [8, 0], or null", capability)
    processes: list[GpuProcess] = []
    for number, process in enumerate(_list(where, (*at, "processes"), data.get("processes", []), "processes",
                                           MAX_PROCESSES_PER_GPU)):  # fmt: skip
        p_at = (*at, "processes", number)
        process = _object(where, p_at, process)
        pid = whole(where, (*p_at, "pid"), process.get("pid"), "a process id >= 0", low=0, high=1 << 31)
        p_name = process.get("name", "?")
        if not isinstance(p_name, str):
            raise fail(where, (*p_at, "name"), "a string", p_name)
        used = process.get("used_mib")
        # A captured process name may be a whole command line with its secrets: hidden once, where it enters.
        processes.append(GpuProcess(pid, redact_command_line(p_name),
                                    None if used is None else _mib(where, (*p_at, "used_mib"), used)))  # fmt: skip
    mig_uuids = _list(where, (*at, "mig_uuids"), data.get("mig_uuids", []), "MIG UUIDs", MAX_GPUS_PER_NODE)
    for number, mig in enumerate(mig_uuids):
        if not isinstance(mig, str) or not mig.strip():
            raise fail(where, (*at, "mig_uuids", number), 'a UUID string such as "MIG-…"', mig)
    flags = {key: optional_bool(where, (*at, key), data.get(key)) for key in _FLAGS}
    nvml_index = whole(where, (*at, "nvml_index"), data["nvml_index"], "a GPU index >= 0", low=0,
                       high=MAX_GPUS_PER_NODE - 1)  # fmt: skip
    return Gpu(
        nvml_index=nvml_index,
        uuid=uuid,
        pci_bus_id=pci,
        name=name,
        memory_total_mib=_mib(where, (*at, "memory_total_mib"), data["memory_total_mib"]),
        memory_used_mib=_mib(where, (*at, "memory_used_mib"), data.get("memory_used_mib", 0)),
        processes=tuple(processes),
        compute_capability=(capability[0], capability[1]) if capability is not None else None,
        mig_uuids=tuple(mig_uuids),
        **flags,
    )


def node_from_dict(data: Any, *, replayed: bool = True, where: str = "topology") -> Node:
    """A node from `node_to_dict` output; raises InputError (a ValueError) naming the field of a malformed one.

    A replayed node's source is "file"; ``replayed=False`` keeps the recorded source (the controller handing
    its node to xdist workers).
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object written by python -m diag topology, got {describe(data)}")
    if data.get("schema") != SCHEMA:
        raise InputError(f"{where}: schema is {describe(data.get('schema'))}, expected {SCHEMA!r}")
    strings = {key: optional_str(where, (key,), data.get(key)) for key in _STRINGS}
    if "gpus" not in data:
        raise InputError(f"{where}: gpus: missing")
    raw_gpus = _list(where, ("gpus",), data["gpus"], "GPUs", MAX_GPUS_PER_NODE)
    gpus = tuple(sorted((_gpu_from_dict(where, i, g) for i, g in enumerate(raw_gpus)), key=lambda g: g.nvml_index))
    if [g.nvml_index for g in gpus] != list(range(len(gpus))):
        raise InputError(f"{where}: gpus[].nvml_index: expected 0..{len(gpus) - 1}, one each")
    seen: dict[str, int] = {}
    for gpu in gpus:
        for uuid in (gpu.uuid, *gpu.mig_uuids):
            key = uuid_key(uuid)
            if key in seen:
                raise InputError(f"{where}: GPUs {seen[key]} and {gpu.nvml_index} share the UUID {uuid!r}: "
                                 "each GPU has its own")  # fmt: skip
            seen[key] = gpu.nvml_index
    p2p: list[tuple[int, int, bool | None]] = []
    for number, entry in enumerate(_list(where, ("p2p",), data.get("p2p", []), "GPU pairs",
                                         MAX_GPUS_PER_NODE * MAX_GPUS_PER_NODE)):  # fmt: skip
        at: tuple[str | int, ...] = ("p2p", number)
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise fail(where, at, "[GPU index, GPU index, true/false/null]", entry)
        a, b = (whole(where, (*at, i), entry[i], f"a GPU index 0..{len(gpus) - 1}", low=0,
                      high=max(len(gpus) - 1, 0)) for i in (0, 1))  # fmt: skip
        p2p.append((a, b, optional_bool(where, (*at, 2), entry[2])))
    nvml_error = data.get("nvml_error")
    if nvml_error is not None:
        nvml_error = _object(where, ("nvml_error",), nvml_error)
        reason, detail = nvml_error.get("reason"), nvml_error.get("detail", "")
        if not isinstance(reason, str) or not isinstance(detail, str):
            raise fail(where, ("nvml_error",), 'an object {"reason": "…", "detail": "…"} or null', nvml_error)
    source = strings["source"] if strings["source"] in ("nvml", "simulated", "file") else "file"
    return Node(
        source="file" if replayed else cast(Source, source),
        hostname=strings["hostname"] or "replayed",
        gpus=gpus,
        driver_version=strings["driver_version"],
        cuda_driver_version=strings["cuda_driver_version"],
        p2p=tuple(p2p),
        spec=strings["spec"],
        torch_cuda=strings["torch_cuda"],
        torch_version=strings["torch_version"],  # optional: captures before it was recorded lack it
        # A node captured where NVML failed replays as that failure, not as a node without GPUs.
        nvml_error=NvmlUnavailable(nvml_error["reason"], nvml_error.get("detail", "")) if nvml_error else None,
    )


def cuda_view_to_dict(view: CudaView) -> dict[str, Any]:
    return asdict(view)


def cuda_view_from_dict(data: dict[str, Any]) -> CudaView:
    return CudaView(
        torch_version=data.get("torch_version"),
        torch_cuda=data.get("torch_cuda"),
        devices=tuple(CudaDevice(**d) for d in data.get("devices", ())),
        peer_access=tuple((int(a), int(b), bool(ok)) for a, b, ok in data.get("peer_access", ())),
        error=data.get("error"),
        simulated=bool(data.get("simulated", False)),
    )


def load_node(path: str) -> Node:
    """Read a `--topology` file; a missing, unreadable or malformed file is a one-line usage error."""
    try:
        return node_from_dict(load_json(path), where=name(path))
    except InputError as exc:
        if not Path(path).exists() and not Path(path).is_symlink():
            raise argparse.ArgumentTypeError(f"{exc} (make one with: python -m diag topology)") from None
        raise argparse.ArgumentTypeError(f"{exc}") from None
