"""A node as JSON: what `python -m diag topology` prints and `--topology FILE` replays."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diag.redact import redact_command_line
from diag.topology.records import CudaDevice, CudaView, Gpu, GpuProcess, Node, NvmlUnavailable

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


def _gpu_from_dict(data: dict[str, Any]) -> Gpu:
    capability = data.get("compute_capability")
    return Gpu(
        nvml_index=int(data["nvml_index"]),
        uuid=str(data["uuid"]),
        pci_bus_id=str(data.get("pci_bus_id", "")),
        name=str(data["name"]),
        memory_total_mib=int(data["memory_total_mib"]),
        memory_used_mib=int(data.get("memory_used_mib", 0)),
        processes=tuple(
            # A captured process name may be a whole command line with its secrets: hidden once, where it enters.
            GpuProcess(int(p["pid"]), redact_command_line(str(p.get("name", "?"))), p.get("used_mib"))
            for p in data.get("processes", [])
        ),
        compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
        mig_mode=data.get("mig_mode"),
        mig_uuids=tuple(data.get("mig_uuids", ())),
        retired_pages_pending=data.get("retired_pages_pending"),
        remapped_rows_pending=data.get("remapped_rows_pending"),
        remapping_failed=data.get("remapping_failed"),
    )


def node_from_dict(data: dict[str, Any], *, replayed: bool = True) -> Node:
    """A node from `node_to_dict` output; raises ValueError on a malformed one.

    A replayed node's source is "file"; ``replayed=False`` keeps the recorded source (the controller handing
    its node to xdist workers).
    """
    if data.get("schema") != SCHEMA:
        raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    try:
        gpus = tuple(sorted((_gpu_from_dict(g) for g in data["gpus"]), key=lambda g: g.nvml_index))
        p2p = tuple((int(a), int(b), None if ok is None else bool(ok)) for a, b, ok in data.get("p2p", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a GPU entry is malformed ({type(exc).__name__}: {exc})") from None
    if [g.nvml_index for g in gpus] != list(range(len(gpus))):
        raise ValueError("GPU nvml_index values must be 0..N-1, one each")
    nvml_error = data.get("nvml_error")
    return Node(
        source="file" if replayed else data.get("source", "file"),
        hostname=str(data.get("hostname", "replayed")),
        gpus=gpus,
        driver_version=data.get("driver_version"),
        cuda_driver_version=data.get("cuda_driver_version"),
        p2p=p2p,
        spec=data.get("spec"),
        torch_cuda=data.get("torch_cuda"),
        torch_version=data.get("torch_version"),  # optional: captures before it was recorded lack it
        # A node captured where NVML failed replays as that failure, not as a node without GPUs.
        nvml_error=NvmlUnavailable(**nvml_error) if nvml_error else None,
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
    """Read a `--topology` file; a missing or malformed file is a one-line usage error."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{path!r}: no such file (make one with: python -m diag topology)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{path!r}: cannot read it ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{path!r} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path!r}: expected a JSON object written by python -m diag topology")
    try:
        return node_from_dict(data)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path!r} is not a diag topology: {exc}") from None
