"""Planning: the map `from_pretrained(device_map="auto" | …)` would compute, and what each GPU then holds.

The map comes from the installed libraries' own planner, run on the full-width meta model with the selected
GPUs' free memory: transformers 5's `_get_device_map` where it exists, else the sequence transformers 4.x runs
inside `from_pretrained` (accelerate's `get_balanced_memory` then `infer_auto_device_map` with the model's
no-split classes). Nothing here allocates a weight.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diag.noise import captured_warnings
from diag.virtual.ordinals import cuda_ordinals_in_accelerate

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
GIB = 1024**3
MIB = 1024**2
# What a GPU needs beyond its weights while the eval runs: the CUDA context and allocator slack, plus the
# KV cache of the layers it holds for KV_TOKENS tokens at batch 1 (lmms-eval and VLMEvalKit run batch 1).
CONTEXT_RESERVE_BYTES = 1 * GIB
KV_TOKENS = 8192

DeviceMap = dict[str, Any]


def host_memory_bytes() -> int:
    """MemAvailable of this machine, the CPU budget from_pretrained would offload into."""
    try:
        text = Path("/proc/meminfo").read_text()
        match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            return int(match[1]) * 1024
    except OSError:
        pass
    return 64 * GIB


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Planning for the node, not this host: the libraries' logs and warnings about it are not the user's.

    accelerate warns that simulated devices are "not available" and about keys and offloading of the meta
    model; what of it matters (memory, offloading, map keys) the checks report with their own codes, so the
    captured warnings are dropped (diag.noise).
    """
    loggers = [logging.getLogger(name) for name in ("accelerate", "accelerate.utils.modeling", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), captured_warnings():
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _extra_no_split(model: torch.nn.Module, classes: tuple[str, ...]) -> Iterator[None]:
    """Add classes to the model's `_no_split_modules` for one planning call (the fix for a split block)."""
    if not classes:
        yield
        return
    had = "_no_split_modules" in vars(model)
    saved = getattr(model, "_no_split_modules", None)
    current = list(saved or [])
    extended = type(saved)([*current, *classes]) if isinstance(saved, set | list) else [*current, *classes]
    setattr(model, "_no_split_modules", extended)  # noqa: B010 (nn.Module.__setattr__, typed for tensors)
    try:
        yield
    finally:
        if had:
            setattr(model, "_no_split_modules", saved)  # noqa: B010
        else:
            delattr(model, "_no_split_modules")


def plan_device_map(
    model: torch.nn.Module, strategy: str, max_memory: Mapping[int | str, int], extra_no_split: tuple[str, ...] = ()
) -> DeviceMap:
    """The device map the installed transformers computes for `strategy` with this memory budget.

    The answer depends only on the model and the arguments, so it is kept per model for the session: the
    device-map, memory and same-device checks ask for the same plan, and on transformers 4.x one plan of an
    80-layer model takes seconds.
    """
    memory = dict(max_memory)
    key = (strategy, tuple(sorted(memory.items(), key=lambda item: str(item[0]))), tuple(extra_no_split))
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        plans[key] = _plan(model, strategy, memory, extra_no_split)
    return dict(plans[key])


_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[Any, ...], DeviceMap]] = weakref.WeakKeyDictionary()


def _plan(
    model: torch.nn.Module, strategy: str, memory: dict[int | str, int], extra_no_split: tuple[str, ...]
) -> DeviceMap:
    with _quiet(), cuda_ordinals_in_accelerate(), _extra_no_split(model, extra_no_split):
        try:
            from transformers.integrations.accelerate import _get_device_map  # transformers 5
        except ImportError:
            return _plan_like_transformers_4(model, strategy, memory)
        return dict(_get_device_map(model, strategy, memory, None))  # type: ignore[arg-type]


def _plan_like_transformers_4(model: torch.nn.Module, strategy: str, memory: dict[int | str, int]) -> DeviceMap:
    """What transformers 4.x `from_pretrained` runs for a string device_map (modeling_utils, 4.45)."""
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    dtype = next(model.parameters()).dtype
    get_no_split = getattr(model, "_get_no_split_modules", None)
    no_split = get_no_split(strategy) if get_no_split is not None else []
    if strategy != "sequential":
        budget = get_balanced_memory(model, dtype=dtype, low_zero=strategy == "balanced_low_0", max_memory=memory,
                                     no_split_module_classes=no_split)  # fmt: skip
    else:
        budget = get_max_memory(memory)
    tie_weights = getattr(model, "tie_weights", None)
    if tie_weights is not None:
        tie_weights()
    return dict(infer_auto_device_map(model, dtype=dtype, max_memory=budget, no_split_module_classes=no_split))


def _owner(name: str, device_map: Mapping[str, Any]) -> Any:
    """The device a parameter or module gets: the value of the longest map key that prefixes it."""
    while True:
        if name in device_map:
            return device_map[name]
        if not name:
            return None
        name = name.rsplit(".", 1)[0] if "." in name else ""


def bytes_by_device(model: torch.nn.Module, device_map: Mapping[str, Any]) -> dict[str, int]:
    """Weight bytes each device holds under the map (tied weights counted once), keyed "cuda:0", "cpu", "disk"."""
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        device = device_label(_owner(name, device_map))
        totals[device] = totals.get(device, 0) + tensor.numel() * tensor.element_size()
    return totals


def device_label(value: Any) -> str:
    """A map value as a device name: 0 -> "cuda:0", "cpu", "disk", None -> "unmapped"."""
    if value is None:
        return "unmapped"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    if isinstance(value, torch.device):
        return str(value) if value.index is not None or value.type != "cuda" else "cuda:0"
    return str(value)


@dataclass(frozen=True)
class PlanRow:
    """One line of the plan table: a device, what it holds, its weights, its reserve and its free memory."""

    device: str
    nvml_index: int | None
    modules: str
    planned_bytes: int
    reserve_bytes: int
    free_bytes: int | None

    @property
    def shortfall_bytes(self) -> int:
        if self.free_bytes is None:
            return 0
        return max(self.planned_bytes + self.reserve_bytes - self.free_bytes, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "nvml_index": self.nvml_index,
            "modules": self.modules,
            "planned_gib": round(self.planned_bytes / GIB, 2),
            "reserve_gib": round(self.reserve_bytes / GIB, 2),
            "free_gib": None if self.free_bytes is None else round(self.free_bytes / GIB, 2),
            "shortfall_gib": round(self.shortfall_bytes / GIB, 2),
        }


MODULES_WIDTH = 160  # a plan row's module list stays readable; what does not fit is counted ("+12 more")


def summarize_modules(names: list[str], layers_prefix: str | None, width: int = MODULES_WIDTH) -> str:
    """`vision_model, mlp1, layers 0-9, norm` from the map keys a device holds.

    Every numbered module list is shortened to its name and ranges, where its first member appears:
    `model.vision.transformer.layers 0-62`; the decoder layers (`layers_prefix`) are called just `layers`.
    A key inside a member (a split layer, `model.layers.5.mlp`) counts as that member. Parts beyond `width`
    characters are counted instead of listed: `…, lm_head, +3 more`.
    """
    parts: list[str] = []  # a module name, or the prefix of a module list whose ranges go there
    numbers: dict[str, list[int]] = {}
    for name in names:
        pieces = name.split(".")
        index = next((i for i, piece in enumerate(pieces) if i and piece.isdigit()), None)
        if index is None:
            parts.append(name or "(whole model)")
            continue
        prefix = ".".join(pieces[:index])
        if prefix not in numbers:
            numbers[prefix] = []
            parts.append(prefix)
        if int(pieces[index]) not in numbers[prefix]:
            numbers[prefix].append(int(pieces[index]))
    texts = [
        _ranges("layers" if part == layers_prefix else part, sorted(numbers[part])) if part in numbers else part
        for part in dict.fromkeys(parts)
    ]
    return _capped(texts, width)


def _capped(texts: list[str], width: int) -> str:
    """The texts joined with ", ", ending in "+N more" before the first one that would pass `width` characters."""
    shown: list[str] = []
    for i, text in enumerate(texts):
        left = len(texts) - i - 1
        candidate = ", ".join([*shown, text]) + (f", +{left} more" if left else "")
        if shown and len(candidate) > width:
            return ", ".join([*shown, f"+{len(texts) - i} more"])
        shown.append(text)
    return ", ".join(shown)


def _ranges(label: str, numbers: list[int]) -> str:
    spans: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return f"{label} {', '.join(spans)}"
