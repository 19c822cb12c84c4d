"""Why a twin run crossed devices, and the map that fixes it (InternVL #587, #133; CogVLM #122, #256).

Each cause comes from the run's own evidence (the stage, the two devices, the module whose forward raised) and
the map; its fix is a new map, which the caller re-runs before calling it verified.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from diag.devicemap.sources import ORIGIN_AUTO_SPLIT, ORIGIN_MODEL_ARGS, DeviceMapSource
from diag.devicemap.validate import buffer_only_modules, cuda_ordinal
from diag.samedevice.run import RunResult
from diag.topology.records import Topology
from diag.topology.selection import PCI_BUS_ID
from diag.twins import LmLayout


@dataclass(frozen=True)
class Cause:
    code: str
    explanation: str
    modules: tuple[str, ...] = ()
    fixed_map: dict[str, Any] | None = None
    no_split_class: str | None = None  # a class to add to no_split_module_classes, then re-plan
    notes: tuple[str, ...] = field(default_factory=tuple)
    # FWD-005 with the inputs on a GPU the map leaves empty: the ordinals the map uses, in order. The fix selects
    # those GPUs (CUDA_VISIBLE_DEVICES) and `fixed_map` renumbers the map from 0, where the inputs go.
    map_gpus: tuple[int, ...] = ()


def owner_key(name: str, device_map: Mapping[str, Any]) -> str | None:
    """The longest map key that is the module (or tensor) or one of its parents; None when none covers it."""
    probe = name
    while True:
        if probe in device_map:
            return probe
        if not probe:
            return None
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""


def owner_device(name: str, device_map: Mapping[str, Any]) -> Any:
    """The map value that places a module: the value of its owner key."""
    key = owner_key(name, device_map)
    return None if key is None else device_map[key]


def _covered(name: str, device_map: Mapping[str, Any]) -> bool:
    return owner_device(name, device_map) is not None


def _split_block(module: str | None, device_map: Mapping[str, Any]) -> str | None:
    """The innermost module around the failing one whose own parts the map puts on different GPUs."""
    if not module:
        return None
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        inside = {str(v) for k, v in device_map.items() if k.startswith(prefix + ".")}
        if len(inside) > 1 and prefix not in device_map:
            return prefix
    return None


def _unsplittable(model: torch.nn.Module, block: str) -> tuple[str, str]:
    """The block to keep whole around a split one, and why the planner split it.

    Where a sub-model on the way to the block lists an enclosing class in its own `_no_split_modules` that the
    model's no-split classes lack, that enclosing block is the unit (Phi-4-multimodal's vision encoder layer,
    declared by its vision model): transformers 5 gathers the no-split classes in `post_init` from each model's
    direct children only, so a sub-model under a plain module (`embed_tokens_extend.image_embed.img_processor`) is
    missed, where 4.x's `_get_no_split_modules` walked every sub-module (transformers PR #45843 met a
    sub-model's no-split class missing from the top-level list too).
    Otherwise the block's class is not among the model's no-split classes (or it is, and the map was not planned
    by transformers)."""
    from transformers import PreTrainedModel

    from diag.twins import no_split_modules

    gathered = set(no_split_modules(model))
    parts = block.split(".")
    declared: dict[str, str] = {}  # class -> the sub-model (dotted name) that lists it
    for depth in range(len(parts) + 1):
        name = ".".join(parts[:depth])
        module = model.get_submodule(name)
        if depth and type(module).__name__ in declared and type(module).__name__ not in gathered:
            cls, owner = type(module).__name__, declared[type(module).__name__]
            owner_class = type(model.get_submodule(owner)).__name__
            return name, (
                f"{owner} ({owner_class}) lists {cls} in its _no_split_modules, but the installed transformers does "
                f"not gather it into {type(model).__name__}'s no-split classes ({', '.join(sorted(gathered))}), so "
                "device_map='auto' can split it on a real node too"
            )
        if isinstance(module, PreTrainedModel):
            for listed in type(module)._no_split_modules or ():
                declared.setdefault(listed, name)
    cls = type(model.get_submodule(block)).__name__
    if cls in gathered:
        return (
            block,
            f"{cls} is one of the model's no-split classes, so only a map not planned by transformers splits it",
        )
    return block, (
        f"{cls} is not among {type(model).__name__}'s no-split classes ({', '.join(sorted(gathered)) or 'none'}), "
        "so device_map='auto' can split it on a real node too"
    )


def classify(result: RunResult, model: torch.nn.Module, device_map: Mapping[str, Any], layout: LmLayout) -> Cause:
    """The cause of a failed run, with the fixed map where one follows from it."""
    error = result.error or ""
    first = _first_gpu(device_map)
    if result.stage == "build":
        return Cause("FWD-008", f"the twin could not be built: {error}")
    if "invalid device ordinal" in error:
        return Cause("FWD-006", "the map or the inputs name a GPU this process cannot see")
    if "out of memory" in error:
        return Cause("MEM-003", f"a GPU ran out of memory in {result.stage}: {error}")
    if "CUDA error" in error or "CUDA-capable device" in error:
        return Cause("FWD-009", f"a CUDA error stopped {result.stage}: {error}")
    if not result.cross_device:
        return Cause("FWD-007", f"the twin failed in {result.stage}: {error}")
    devices = result.devices or ("?", "?")
    left_on_cpu = [m for m in buffer_only_modules(model) if not _covered(m, device_map)]
    inputs_off_map = _inputs_off_the_map(result, devices, device_map)
    if inputs_off_map is not None:
        return inputs_off_map
    root_beside_others = _root_key_beside_others(model, device_map)
    if root_beside_others is not None:
        return root_beside_others
    if "cpu" in devices and left_on_cpu:
        return Cause(
            "FWD-001",
            f"{', '.join(left_on_cpu)} is not in the map and stayed on the CPU; its buffers meet GPU tensors",
            tuple(left_on_cpu),
            {**device_map, **dict.fromkeys(left_on_cpu, owner_device(layout.embed, device_map) or first)},
        )
    if "cpu" in devices:
        return Cause("FWD-005", "a tensor on the CPU met the model on a GPU: the inputs (or part of the model) "
                     f"are not on the GPU that needs them ({devices[0]} and {devices[1]})")  # fmt: skip
    block = _split_block(result.module, device_map)
    if block is not None:
        block, why = _unsplittable(model, block)
        cls = type(model.get_submodule(block)).__name__
        keys = [k for k in device_map if k.startswith(block + ".")]
        fixed = {k: v for k, v in device_map.items() if k not in keys}
        fixed[block] = device_map[keys[0]]
        return Cause("FWD-004", f"{block} ({cls}) is split across GPUs and its own forward mixes them; {why}",
                     (block,), fixed, no_split_class=cls)  # fmt: skip
    embed_device = owner_device(layout.embed, device_map)
    head_device = owner_device(layout.head, device_map)
    if result.step in ("generate", "chat") and head_device != embed_device:
        last_layer = f"{layout.layers}.{layout.num_layers - 1}"
        pinned = (layout.head, layout.norm, last_layer)
        return Cause(
            "FWD-002",
            f"during generate the head ({layout.head}, on {_label(head_device)}) returns logits on another GPU than "
            f"the embeddings ({layout.embed}, on {_label(embed_device)})",
            pinned,
            {**device_map, **dict.fromkeys(pinned, embed_device)},
        )
    vision_devices = {owner_device(v, device_map) for v in layout.vision}
    if vision_devices - {embed_device}:
        # Keys inside the vision modules go: the whole module moves, not just its parent key.
        inside = tuple(f"{m}." for m in layout.vision)
        kept = {k: v for k, v in device_map.items() if not k.startswith(inside)}
        return Cause(
            "FWD-003",
            f"the image embeddings ({', '.join(layout.vision)}) are merged into the text embeddings on another GPU",
            layout.vision,
            {**kept, **dict.fromkeys(layout.vision, embed_device)},
        )
    return Cause("FWD-007", f"{result.module or 'a module'} mixed {devices[0]} and {devices[1]} in {result.op}")


def _inputs_off_the_map(result: RunResult, devices: tuple[str, str], device_map: Mapping[str, Any]) -> Cause | None:
    """FWD-005 when the inputs sit on a GPU the map gives no part of the model (`{"": 1}` with the inputs on
    cuda:0, or a VLMEvalKit AUTO_SPLIT map offset past its process's first GPU): the error's two devices are the
    inputs' GPU and one the map uses. A map that also puts modules on the CPU or disk is left to the other causes.
    """
    inputs = cuda_ordinal(result.inputs_device)
    values = list(device_map.values())
    ordinals = [cuda_ordinal(v) for v in values]
    if inputs is None or not values or any(o is None for o in ordinals):
        return None
    used = tuple(sorted({o for o in ordinals if o is not None}))
    met = {cuda_ordinal(d) for d in devices}
    if inputs in used or inputs not in met or not (met - {inputs}) <= set(used):
        return None
    renumber = {ordinal: index for index, ordinal in enumerate(used)}
    fixed = {key: _renumbered(value, renumber) for key, value in device_map.items()}
    where = f"cuda:{used[0]}" if len(used) == 1 else f"cuda:{', cuda:'.join(str(o) for o in used)}"
    return Cause(
        "FWD-005",
        f"the inputs sit on {_label(inputs)}, where the map puts no part of the model; the model is on {where}, "
        "and with the whole model on one GPU from_pretrained adds no hook that would move the inputs"
        if len(used) == 1
        else f"the inputs sit on {_label(inputs)}, where the map puts no part of the model (it uses {where})",
        fixed_map=fixed,
        map_gpus=used,
    )


def _root_key_beside_others(model: torch.nn.Module, device_map: Mapping[str, Any]) -> Cause | None:
    """FWD-010: the map has the root key "" and other keys on other devices. accelerate's dispatch_model gives
    every submodule a hook for the root's device before it reaches the other keys
    (hooks.py::attach_align_device_hook_on_blocks), so a module mapped elsewhere keeps its weights there while its
    inputs are moved to the root's device. The fix spells "" out as the modules it stands for."""
    if "" not in device_map:
        return None
    root = device_map[""]
    others = {key: value for key, value in device_map.items() if key and value != root}
    if not others:
        return None
    fixed = {key: value for key, value in device_map.items() if key}
    _spell_out(model, "", root, fixed)
    return Cause(
        "FWD-010",
        f'the map has the root key "" ({_label(root)}) beside {", ".join(others)} on other devices: accelerate '
        "moves the inputs of every module to the root's device, wherever the map put its weights",
        tuple(others),
        fixed,
    )


def _spell_out(module: torch.nn.Module, prefix: str, root: Any, device_map: dict[str, Any]) -> None:
    """Map to `root` every child (and tensor) of `module` that no key in `device_map` covers, in place."""
    for name, child in module.named_children():
        full = prefix + name
        if full in device_map:
            continue
        if any(key.startswith(full + ".") for key in device_map):
            _spell_out(child, full + ".", root, device_map)
        else:
            device_map[full] = root
    tensors = [name for name, _ in module.named_parameters(recurse=False)]
    tensors += [name for name, _ in module.named_buffers(recurse=False)]
    for name in tensors:
        device_map.setdefault(prefix + name, root)


def select_gpus_fix(
    cause: Cause, source: DeviceMapSource, topology: Topology, map_file: str | None = None
) -> tuple[str, dict[str, str]] | None:
    """The fix of an inputs-off-the-map FWD-005 with the physical GPUs named: its summary and the environment.

    A map the user wrote: select the GPUs the map uses (`CUDA_VISIBLE_DEVICES`, nvidia-smi numbers) and renumber
    the map from 0, written the way the user wrote it. VLMEvalKit's AUTO_SPLIT map: the split is the cause (it
    offsets by LOCAL_RANK inside the slice run.py already gave the process), so the fix changes the launch.
    """
    if cause.code != "FWD-005" or not cause.map_gpus or cause.fixed_map is None:
        return None
    from diag.devicemap.fit import nvml_index_of

    physical = [nvml_index_of(topology, ordinal) for ordinal in cause.map_gpus]
    if any(index is None for index in physical):
        return None
    named = ", ".join(f"cuda:{o} is GPU {p}" for o, p in zip(cause.map_gpus, physical, strict=True))
    placed = ", ".join(f"cuda:{o} (GPU {p})" for o, p in zip(cause.map_gpus, physical, strict=True))
    visible = ",".join(str(p) for p in physical)
    inputs_gpu = nvml_index_of(topology, 0)
    if source.origin == ORIGIN_AUTO_SPLIT:
        slice_text = topology.selection.cuda_visible_devices or "all GPUs"
        return (
            f"VLMEvalKit's AUTO_SPLIT split counts its GPUs from LOCAL_RANK inside the GPUs run.py already gave "
            f"this process (CUDA_VISIBLE_DEVICES={slice_text}), so it puts the model on {placed} and leaves cuda:0 "
            f"(GPU {inputs_gpu}), where the inputs go, empty. Run one process with AUTO_SPLIT=1 (`python run.py` "
            "with your arguments, not torchrun) so the split spreads over every GPU, or leave AUTO_SPLIT unset "
            "with a VLMEvalKit whose "
            'InternVL loads with device_map="auto" over its process\'s GPUs (open-compass/VLMEvalKit PR #952).',
            {},
        )
    value = _written_like(source, cause.fixed_map, map_file)
    where = "in --model_args " if source.origin == ORIGIN_MODEL_ARGS else ""
    gpus = "that GPU" if len(physical) == 1 else "those GPUs"
    return (
        f"Select {gpus} and map to 0 ({named}): start the eval with CUDA_DEVICE_ORDER={PCI_BUS_ID} "
        f"CUDA_VISIBLE_DEVICES={visible} and {where}device_map={value}; or move the inputs to the model's GPU "
        "(`.to(model.device)`) before calling it.",
        {"CUDA_DEVICE_ORDER": PCI_BUS_ID, "CUDA_VISIBLE_DEVICES": visible},
    )


def _written_like(source: DeviceMapSource, fixed_map: Mapping[str, Any], map_file: str | None) -> str:
    """The renumbered map in the form the user gave it: `0`, `cuda:0`, `{"": 0}`, or the file diag wrote."""
    if isinstance(source.value, dict):
        if len(fixed_map) <= 4 or map_file is None:
            return json.dumps(dict(fixed_map))
        return f"the map in {map_file}"
    if set(fixed_map) != {""}:
        return json.dumps(dict(fixed_map))
    new = fixed_map[""]
    if isinstance(source.value, str) and source.value.startswith("cuda"):
        return f"cuda:{cuda_ordinal(new)}" if source.origin == ORIGIN_MODEL_ARGS else f'"cuda:{cuda_ordinal(new)}"'
    return str(cuda_ordinal(new))


def _renumbered(value: Any, renumber: Mapping[int, int]) -> Any:
    """A map value moved to its new ordinal, written the way it was: 1 -> 0, "cuda:1" -> "cuda:0", "1" -> "0"."""
    ordinal = cuda_ordinal(value)
    if ordinal is None or ordinal not in renumber:
        return value
    new = renumber[ordinal]
    if isinstance(value, int):
        return new
    if isinstance(value, str) and value.startswith("cuda"):
        return f"cuda:{new}"
    return str(new) if isinstance(value, str) else new


def _first_gpu(device_map: Mapping[str, Any]) -> Any:
    return next((v for v in device_map.values() if cuda_ordinal(v) is not None), 0)


def _label(value: Any) -> str:
    ordinal = cuda_ordinal(value)
    return f"cuda:{ordinal}" if ordinal is not None else str(value)
