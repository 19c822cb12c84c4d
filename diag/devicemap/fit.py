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
from diag.devicemap.validate import (
    check_dict_map,
    correct_dict_map,
    cuda_ordinal,
    resolved_device,
    transformers_rejects,
)
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


def resolve_map(
    source: DeviceMapSource, model: torch.nn.Module, topology: Topology, *, corrected: bool = True
) -> dict[str, Any] | None:
    """The map from_pretrained ends up with; None when the value itself is unusable (other checks say why).

    A dict map whose only findings are warnings comes back corrected (for the memory plan) unless `corrected`
    is False: the same-device run must run the map exactly as the eval will.
    """
    value = source.value
    if source.kind == "strategy":
        return plan_device_map(model, str(value), _budget(free_bytes_by_ordinal(topology)))
    if isinstance(value, dict):
        visible = len(topology.cuda.devices)
        if not corrected:
            as_written = check_dict_map(model, value, visible, topology.selection.nvml_indices)
            return None if as_written.failures else dict(value)
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
    free = free_bytes_by_ordinal(topology)
    return rows_for(model, spec, device_map, free, {o: nvml_index_of(topology, o) for o in free})


def gpus_needed(model: torch.nn.Module, spec: ModelSpec, strategy: str, free_each: int, start: int) -> int | None:
    """How many GPUs with `free_each` bytes free the same planner needs so that nothing is offloaded or short.

    Found by planning again with more GPUs, so the number is the planner's answer, not an estimate.
    """
    for count in range(max(start, 1), 65):
        free = dict.fromkeys(range(count), free_each)
        memory = _budget(free)
        device_map = plan_device_map(model, strategy if strategy in STRATEGIES else "auto", memory)
        rows = rows_for(model, spec, device_map, free, dict.fromkeys(free))
        if all(r.shortfall_bytes == 0 for r in rows) and not any(r.free_bytes is None for r in rows):
            return count
    return None


def capped_max_memory(
    model: torch.nn.Module, spec: ModelSpec, strategy: str, free: Mapping[int, int], rows: list[PlanRow]
) -> dict[int, int] | None:
    """A max_memory that leaves each GPU its reserve, if the same planner then fits the model on these GPUs."""
    caps = {o: max(free[o] - max(r.reserve_bytes, CONTEXT_RESERVE_BYTES), 0) for o, r in _by_ordinal(rows).items()}
    for _ in range(3):
        memory = _budget(caps)
        device_map = plan_device_map(model, strategy if strategy in STRATEGIES else "auto", memory)
        planned = rows_for(model, spec, device_map, free, dict.fromkeys(free))
        if all(r.shortfall_bytes == 0 for r in planned) and all(r.free_bytes is not None for r in planned):
            return caps
        caps = {o: max(caps[o] - r.shortfall_bytes, 0) for o, r in _by_ordinal(planned).items()}
    return None


def _budget(gpus: Mapping[int, int]) -> dict[int | str, int]:
    """A max_memory for the planner: these GPUs, and this machine's available memory as the CPU."""
    memory: dict[int | str, int] = {"cpu": host_memory_bytes()}
    for ordinal, free in gpus.items():
        memory[ordinal] = free
    return memory


def _by_ordinal(rows: list[PlanRow]) -> dict[int, PlanRow]:
    return {int(r.device.split(":")[1]): r for r in rows if r.device.startswith("cuda:")}


def rows_for(
    model: torch.nn.Module,
    spec: ModelSpec,
    device_map: Mapping[str, Any],
    free: Mapping[int, int],
    nvml_by_ordinal: Mapping[int, int | None],
) -> list[PlanRow]:
    """Plan rows for GPUs with the given free bytes by ordinal, then cpu / disk / meta if they hold weights."""
    from diag.twins import language_model_layout

    layout = language_model_layout(model)
    sizes = bytes_by_device(model, device_map)
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
        rows.append(PlanRow(label, nvml_by_ordinal.get(ordinal), summarize_modules(keys, layout.layers),
                            sizes.get(label, 0), reserve, free_bytes))  # fmt: skip
    for label in ("cpu", "disk", "meta"):
        if sizes.get(label):
            rows.append(PlanRow(label, None, summarize_modules(keys_by_device.get(label, []), layout.layers),
                                sizes[label], 0, None))  # fmt: skip
    return rows


__all__ = [
    "capped_max_memory",
    "free_bytes_by_ordinal",
    "gpus_needed",
    "kv_bytes_per_layer",
    "plan_rows",
    "resolve_map",
    "rows_for",
]
