"""Memory fit: the map the eval will use, what each device then holds, and what it needs beyond the weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from diag.devicemap.plan import (
    CONTEXT_RESERVE_BYTES,
    KV_TOKENS,
    MIB,
    STRATEGIES,
    PlanRow,
    bytes_by_device,
    device_label,
    host_memory_bytes,
    plan_device_map,
    summarize_modules,
)
from diag.devicemap.sources import DeviceMapSource
from diag.devicemap.validate import correct_dict_map, cuda_ordinal, resolved_device, transformers_rejects
from diag.topology.records import Gpu, Topology, uuid_key

if TYPE_CHECKING:
    from diag.twins import ModelSpec


def free_bytes_by_ordinal(topology: Topology) -> dict[int, int]:
    """Free memory of each GPU this process sees, by cuda ordinal (what torch.cuda.mem_get_info would say)."""
    by_uuid: dict[str, Gpu] = {}
    for gpu in topology.node.gpus:
        for uuid in (gpu.uuid, *gpu.mig_uuids):
            by_uuid[uuid_key(uuid)] = gpu
    free = {}
    for device in topology.cuda.devices:
        match = by_uuid.get(uuid_key(device.uuid))
        free[device.cuda_index] = (match.memory_free_mib if match else device.memory_total_mib) * MIB
    return free


def nvml_index_of(topology: Topology, cuda_index: int) -> int | None:
    keys = {uuid_key(d.uuid): d.cuda_index for d in topology.cuda.devices}
    for gpu in topology.node.gpus:
        for uuid in (gpu.uuid, *gpu.mig_uuids):
            if keys.get(uuid_key(uuid)) == cuda_index:
                return gpu.nvml_index
    return None


def resolve_map(source: DeviceMapSource, model: torch.nn.Module, topology: Topology) -> dict[str, Any] | None:
    """The map from_pretrained ends up with; None when the value itself is unusable (other checks say why)."""
    value = source.value
    if source.kind == "strategy":
        memory: dict[int | str, int] = {"cpu": host_memory_bytes()}
        for ordinal, free in free_bytes_by_ordinal(topology).items():
            memory[ordinal] = free
        return plan_device_map(model, str(value), memory)
    if isinstance(value, dict):
        visible = len(topology.cuda.devices)
        fixed, report = correct_dict_map(model, value, visible, topology.selection.nvml_indices)
        if report.failures:
            return None
        return fixed if fixed is not None else dict(value)
    if not isinstance(value, str | int) or isinstance(value, bool) or transformers_rejects(value) is not None:
        return None
    device = resolved_device(value)
    target = cuda_ordinal(device)
    if target is not None and target >= len(topology.cuda.devices):
        return None
    return {"": target if target is not None else str(device)}


def _lm_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("llm_config", "text_config"):
        if isinstance(config.get(key), Mapping):
            return config[key]  # type: ignore[no-any-return]
    return config


def kv_bytes_per_layer(spec: ModelSpec, dtype_bytes: int) -> int:
    """KV cache of one decoder layer for KV_TOKENS tokens at batch 1."""
    lm = _lm_config(spec.config)
    hidden = int(lm.get("hidden_size", 4096))
    heads = int(lm.get("num_attention_heads", 32))
    kv_heads = int(lm.get("num_key_value_heads") or heads)
    head_dim = int(lm.get("head_dim") or hidden // heads)
    return 2 * kv_heads * head_dim * KV_TOKENS * dtype_bytes


def plan_rows(
    model: torch.nn.Module, spec: ModelSpec, device_map: Mapping[str, Any], topology: Topology
) -> list[PlanRow]:
    """The plan table: every visible GPU (holding something or not), then cpu / disk if anything went there."""
    from diag.twins import language_model_layout

    layout = language_model_layout(model)
    sizes = bytes_by_device(model, device_map)
    free = free_bytes_by_ordinal(topology)
    dtype_bytes = next(model.parameters()).element_size()
    per_layer = kv_bytes_per_layer(spec, dtype_bytes)
    keys_by_device: dict[str, list[str]] = {}
    for key, value in device_map.items():
        keys_by_device.setdefault(device_label(value), []).append(key)
    rows = []
    for ordinal, free_bytes in sorted(free.items()):
        label = f"cuda:{ordinal}"
        keys = keys_by_device.get(label, [])
        layers = layout.num_layers if "" in keys else sum(1 for k in keys if k.startswith(layout.layers + "."))
        reserve = CONTEXT_RESERVE_BYTES + per_layer * layers if keys else 0
        rows.append(PlanRow(label, nvml_index_of(topology, ordinal), summarize_modules(keys, layout.layers),
                            sizes.get(label, 0), reserve, free_bytes))  # fmt: skip
    for label in ("cpu", "disk", "meta"):
        if sizes.get(label):
            rows.append(PlanRow(label, None, summarize_modules(keys_by_device.get(label, []), layout.layers),
                                sizes[label], 0, None))  # fmt: skip
    return rows


__all__ = ["STRATEGIES", "free_bytes_by_ordinal", "kv_bytes_per_layer", "plan_rows", "resolve_map"]
