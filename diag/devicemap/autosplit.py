"""VLMEvalKit's `AUTO_SPLIT=1` InternVL split and `run.py`'s GPU slicing, reproduced as data.

The split (`vlmeval/vlm/internvl/utils.py::split_model`, removed from the shared code by PR #952) spreads the
language-model layers over one process's GPUs, the first GPU counted as half: `ceil(L / (n - 0.5))` layer slots
per GPU, half of that (rounded up) on the first. Slots are filled in order, so the rounding can write keys for
layers the model does not have (80 layers on 4 GPUs: 12 + 3 * 23 = 81 slots, `layers.80`). The pinned modules and
the last layer then go to the first GPU. Which GPUs a process takes changed three times:

- "nov-2024" (PR #566 era; kept as `split_model_old`): GPUs interleave across ranks, block i on
  `rank + world_size * i`, `device_count // world_size` of them.
- "dec09-2024" (read in a copy of utils.py with `num_gpus_per_node = 8`): `GPUS_PER_PROCESS` (default 8)
  GPUs from `local_rank * GPUS_PER_PROCESS`, checked against a node of 8, whatever CUDA shows the process.
  With `CUDA_VISIBLE_DEVICES=4,5,6,7` the map names cuda:0..7 in a process that has cuda:0..3 (issue #674:
  the split "does not consider a start GPU index other than 0").
- "dec30-2024" (open-compass/VLMEvalKit utils.py @13c651fa; the copy in `vlmeval/vlm/qtunevl/qtune_vl_chat.py`
  lives on): the same, with GPUS_PER_PROCESS capped at `device_count // LOCAL_WORLD_SIZE`.

`run.py` (@002f7b78) parses CUDA_VISIBLE_DEVICES with `int()` and gives each of LOCAL_WORLD_SIZE processes
`NGPU // LOCAL_WORLD_SIZE` GPUs, leaving the remainder unused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from diag.devicemap.sources import ORIGIN_AUTO_SPLIT, DeviceMapSource

Variant = Literal["dec30-2024", "dec09-2024", "nov-2024"]
VARIANTS: tuple[Variant, ...] = ("dec30-2024", "dec09-2024", "nov-2024")
DEFAULT_GPUS_PER_PROCESS = 8
HARD_CODED_GPUS_PER_NODE = 8  # dec09-2024
PINNED_MODULES: tuple[str, ...] = (
    "vision_model",
    "mlp1",
    "language_model.model.tok_embeddings",
    "language_model.model.embed_tokens",
    "language_model.output",
    "language_model.model.norm",
    "language_model.model.rotary_emb",
    "language_model.lm_head",
)
# The dec09-2024 copy pinned everything above but rotary_emb (InternVL #774, fixed upstream by InternVL PR #789).
PINNED_MODULES_WITHOUT_ROTARY: tuple[str, ...] = tuple(m for m in PINNED_MODULES if not m.endswith("rotary_emb"))
PROCESSES_ASSERTION = "The number of processes should be less than or equal to the number of GPUs"


class VlmevalkitAssertion(AssertionError):
    """An assertion VLMEvalKit itself would fail, with its own message."""


class SplitError(ValueError):
    """The split cannot be built at all (no GPU for the process); says how VLMEvalKit fails instead."""


@dataclass(frozen=True)
class SplitPlan:
    """The map VLMEvalKit would write for one process, and how it chose the GPUs.

    `device_map` holds cuda ordinals as VLMEvalKit writes them, including keys for layers that do not exist.
    """

    device_map: dict[str, int]
    gpus_per_process: int
    first_gpu: int
    variant: str
    notes: tuple[str, ...]


def internvl_split(
    *,
    num_layers: int,
    layers: str,
    pinned: Sequence[str],
    last_layer_on_first: bool = True,
    visible_gpus: int,
    local_rank: int = 0,
    local_world_size: int = 1,
    world_size: int | None = None,
    gpus_per_process_env: str | None = None,
    variant: str = "dec30-2024",
) -> SplitPlan:
    """VLMEvalKit's InternVL split for one process that sees `visible_gpus` GPUs.

    `layers` is the dotted prefix of the decoder layers ("language_model.model.layers"); `pinned` the modules
    upstream puts on the first GPU that this model has. `gpus_per_process_env` is GPUS_PER_PROCESS as set (None
    when unset; a non-integer raises int()'s own ValueError, as upstream). The nov-2024 variant reads the rank
    as `local_rank` (one node, where RANK equals LOCAL_RANK) and `world_size` (default: `local_world_size`).
    """
    if num_layers < 1 or local_world_size < 1 or visible_gpus < 0:
        raise ValueError(f"num_layers={num_layers}, local_world_size={local_world_size}, visible_gpus={visible_gpus}")
    if variant == "nov-2024":
        ordinals, notes = _interleaved(visible_gpus, local_rank, world_size or local_world_size, gpus_per_process_env)
    elif variant in ("dec09-2024", "dec30-2024"):
        ordinals, notes = _contiguous(variant, visible_gpus, local_rank, local_world_size, gpus_per_process_env)
    else:
        raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    device_map = _fill(ordinals, num_layers, layers, pinned, last_layer_on_first)
    notes += _map_notes(device_map, num_layers, layers, visible_gpus)
    return SplitPlan(device_map, len(ordinals), ordinals[0], variant, notes)


def split_source(plan: SplitPlan) -> DeviceMapSource:
    """The plan as a device-map source: what from_pretrained receives when VLMEvalKit runs with AUTO_SPLIT=1."""
    device_map: dict[str, str | int] = dict(plan.device_map)
    return DeviceMapSource(
        device_map, ORIGIN_AUTO_SPLIT, "AUTO_SPLIT=1", note=f"VLMEvalKit InternVL split, {plan.variant}"
    )


def layer_slots(num_layers: int, gpus: int) -> list[int]:
    """Layer slots per GPU: `ceil(L / (n - 0.5))` each, half of that rounded up on the first (upstream's floats)."""
    per_gpu = math.ceil(num_layers / (gpus - 0.5))
    return [math.ceil(per_gpu * 0.5)] + [per_gpu] * (gpus - 1)


def layer_counts(device_map: Mapping[str, int], layers: str, num_layers: int) -> dict[int, int]:
    """How many of the model's real layers each cuda ordinal holds under the map."""
    counts: dict[int, int] = {}
    for index in range(num_layers):
        ordinal = device_map[f"{layers}.{index}"]
        counts[ordinal] = counts.get(ordinal, 0) + 1
    return counts


def _requested(gpus_per_process_env: str | None) -> int:
    return DEFAULT_GPUS_PER_PROCESS if gpus_per_process_env is None else int(gpus_per_process_env)


def _contiguous(
    variant: str, visible_gpus: int, local_rank: int, local_world_size: int, env: str | None
) -> tuple[list[int], tuple[str, ...]]:
    """dec09/dec30: GPUS_PER_PROCESS GPUs from local_rank * GPUS_PER_PROCESS, checked against the node size."""
    requested = _requested(env)
    shown = f"GPUS_PER_PROCESS={requested}" + (" (default)" if env is None else "")
    notes: list[str] = []
    if variant == "dec30-2024":
        node, cap = visible_gpus, visible_gpus // local_world_size
        gpus_per_process = min(requested, cap)
        if gpus_per_process < requested:
            notes.append(f"{shown} capped to {cap} by device_count // LOCAL_WORLD_SIZE = {node} // {local_world_size}")
    else:
        node, gpus_per_process = HARD_CODED_GPUS_PER_NODE, requested
        notes.append(f"node size hard-coded as {node} GPUs; the process sees {visible_gpus}")
    start = local_rank * gpus_per_process
    end = start + gpus_per_process
    if end > node:
        raise VlmevalkitAssertion(
            f"Process {local_rank} tries to access GPU {end}, but only {node} GPUs are available per node."
        )
    ordinals = list(range(start, end))
    _require_gpus(ordinals, f"{shown} resolves to {gpus_per_process} GPUs for this process")
    return ordinals, tuple(notes)


def _interleaved(visible_gpus: int, rank: int, world_size: int, env: str | None) -> tuple[list[int], tuple[str, ...]]:
    """nov-2024: device_count // world_size GPUs, block i on rank + world_size * i."""
    gpus = visible_gpus // world_size
    ordinals = [rank + world_size * i for i in range(gpus)]
    _require_gpus(ordinals, f"device_count // WORLD_SIZE = {visible_gpus} // {world_size} = {gpus}")
    notes = [f"rank {rank} of {world_size} interleaves over cuda:{', cuda:'.join(map(str, ordinals))}"]
    if env is not None:
        notes.append(f"GPUS_PER_PROCESS={env} is not read by this split")
    return ordinals, tuple(notes)


def _require_gpus(ordinals: list[int], why: str) -> None:
    if not ordinals:
        raise SplitError(f"{why}: VLMEvalKit's split_model fails with IndexError: list index out of range")


def _fill(
    ordinals: list[int], num_layers: int, layers: str, pinned: Sequence[str], last_layer_on_first: bool
) -> dict[str, int]:
    """Layer slots in order, then the pinned modules and the last layer on the first GPU, as upstream writes them."""
    device_map: dict[str, int] = {}
    layer = 0
    for ordinal, slots in zip(ordinals, layer_slots(num_layers, len(ordinals)), strict=True):
        for _ in range(slots):
            device_map[f"{layers}.{layer}"] = ordinal
            layer += 1
    for name in pinned:
        device_map[name] = ordinals[0]
    if last_layer_on_first:
        device_map[f"{layers}.{num_layers - 1}"] = ordinals[0]
    return device_map


def _map_notes(device_map: Mapping[str, int], num_layers: int, layers: str, visible_gpus: int) -> tuple[str, ...]:
    notes: list[str] = []
    extra = sorted(index for index in map(lambda key: _layer_index(key, layers), device_map) if index >= num_layers)
    if extra:
        span = f"{layers}.{extra[0]}" + (f"..{extra[-1]}" if len(extra) > 1 else "")
        notes.append(f"writes {len(extra)} key(s) for layers the {num_layers}-layer model does not have: {span}")
    beyond = sorted({ordinal for ordinal in device_map.values() if ordinal >= visible_gpus})
    if beyond:
        notes.append(
            f"names cuda:{', cuda:'.join(map(str, beyond))} but the process sees {visible_gpus} GPU(s): "
            "CUDA error: invalid device ordinal"
        )
    return tuple(notes)


def _layer_index(key: str, layers: str) -> int:
    head, _, tail = key.rpartition(".")
    return int(tail) if head == layers and tail.isdigit() else -1


def parse_cuda_visible_devices_like_vlmevalkit(value: str) -> list[int]:
    """run.py's `get_gpu_list` for a set CUDA_VISIBLE_DEVICES: `int()` of each entry, raising as it does.

    A `GPU-…`/`MIG-…` UUID raises `ValueError: invalid literal for int() with base 10: 'GPU-…'`. An empty
    value returns []: run.py then counts `nvidia-smi --list-gpus` instead.
    """
    if value == "":
        return []
    return [int(entry) for entry in value.split(",")]


def process_slices(ngpu: int, local_world_size: int) -> list[list[int]]:
    """Positions in the GPU list each local process gets from run.py: NGPU // LOCAL_WORLD_SIZE each, in order.

    The remainder stays unused. With one process, or no GPU list, run.py does not slice: each sees them all.
    """
    if local_world_size <= 1 or ngpu == 0:
        return [list(range(ngpu)) for _ in range(max(local_world_size, 1))]
    if ngpu < local_world_size:
        raise VlmevalkitAssertion(PROCESSES_ASSERTION)
    per_process = ngpu // local_world_size
    return [list(range(rank * per_process, (rank + 1) * per_process)) for rank in range(local_world_size)]


def auto_split_flag_like_vlmevalkit(auto_split: str | None, device_count: int, world_size: int) -> bool:
    """Whether VLMEvalKit splits the model: AUTO_SPLIT=1, or (Dec 2024 to PR #952) more GPUs than processes.

    The second rule needs `device_count` to exceed WORLD_SIZE and divide by it evenly (`vlmeval/smp/misc.py`).
    """
    if auto_split == "1":
        return True
    return device_count > world_size and device_count % world_size == 0
