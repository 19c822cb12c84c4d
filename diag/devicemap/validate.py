"""Will `from_pretrained(device_map=…)` accept this map on this node? Each finding names its fix code.

Strings and ints go through the installed transformers' own check (`from_pretrained` on an empty folder: the
device-map check runs before any file is read, so the error is exactly the one the eval would raise). Dict maps
are checked against the full-width meta model with accelerate's `check_device_map` for coverage.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

OFFLOAD = ("cpu", "disk")
_CUDA = re.compile(r"cuda:(\d+)")


@dataclass(frozen=True)
class Finding:
    """One problem with a map: code, message, and the corrected map when one can be derived."""

    code: str
    message: str
    fixed_map: dict[str, Any] | None = None
    details: str = ""


@dataclass
class DictMapReport:
    """What checking a dict map against the model found: failures, and risks that are warnings."""

    failures: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)


@cache
def _empty_model_folder() -> str:
    return tempfile.mkdtemp(prefix="diag-empty-model-")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def transformers_rejects(value: str | int) -> str | None:
    """The error the installed `from_pretrained` raises for this device_map value, or None if it accepts it."""
    from transformers import LlamaForCausalLM

    with _offline():
        try:
            LlamaForCausalLM.from_pretrained(_empty_model_folder(), device_map=value, local_files_only=True)
        except ValueError as exc:
            return f"ValueError: {exc}"
        except Exception:  # the check passed; loading then fails on the empty folder, as intended
            return None
    return None


def resolved_device(value: str | int) -> torch.device | int | str:
    """Where an accepted string or int puts the whole model, as the installed transformers resolves it.

    transformers 5 turns "cuda" into "cuda:{LOCAL_RANK}" (integrations/accelerate.py::check_and_set_device_map);
    4.x hands the string to torch.device.
    """
    try:
        from transformers.integrations.accelerate import check_and_set_device_map
    except ImportError:  # transformers 4.x
        pass
    else:
        resolved = check_and_set_device_map(value)
        if isinstance(resolved, dict) and "" in resolved:
            target: torch.device | int | str = resolved[""]
            return target
    if isinstance(value, int):
        return value
    return torch.device(value)


def cuda_ordinal(value: Any) -> int | None:
    """The CUDA ordinal a map value names (0, "cuda:0", torch.device("cuda", 0)); None for cpu/disk/meta."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.device):
        return (value.index or 0) if value.type == "cuda" else None
    if isinstance(value, str):
        if value == "cuda":
            return 0
        match = _CUDA.fullmatch(value)
        return int(match[1]) if match else None
    return None


def is_valid_value(value: Any) -> bool:
    return value in OFFLOAD or value == "meta" or cuda_ordinal(value) is not None


def physical_remap(ordinals: Sequence[int], selected_nvml: Sequence[int], visible: int) -> dict[int, int] | None:
    """If out-of-range ordinals are the selected GPUs' nvidia-smi numbers, the physical -> cuda mapping."""
    beyond = [o for o in ordinals if o >= visible]
    if not beyond or not set(ordinals) <= set(selected_nvml):
        return None
    return {nvml: cuda for cuda, nvml in enumerate(selected_nvml)}


def _module_names(model: torch.nn.Module) -> set[str]:
    names = {name for name, _ in model.named_modules()}
    names |= {name for name, _ in model.named_parameters()}
    names |= {name for name, _ in model.named_buffers()}
    return names


SUGGESTED_KEYS = 20  # unknown keys that get a spelling suggestion; the rest are counted, not matched


class _Suggester:
    """Spelling suggestions for unknown map keys, linear in the model's modules, not in modules x keys.

    A key is walked down the module tree one dotted part at a time; a part that is no child of the path so far is
    matched against that path's children only (a dict built once), so `model.layer.0` finds `model.layers.0`
    through the four children of `model`. At most SUGGESTED_KEYS keys are matched at all: a 100,000-key map of
    another model gets 20 suggestions and a count, not 100,000 fuzzy searches.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.children: dict[str, list[str]] = {}
        for name in sorted(self.names):
            parent, _, part = name.rpartition(".")
            self.children.setdefault(parent, []).append(part)
        self.asked = 0

    def closest(self, name: str) -> str | None:
        """The module a misspelt key meant; None when only a number differs (`layers.80` of an 80-layer model is a
        layer that does not exist, as VLMEvalKit's split writes, not a typo for `layers.8`)."""
        if self.asked >= SUGGESTED_KEYS:
            return None
        self.asked += 1
        path = ""
        for part in name.split("."):
            here = f"{path}.{part}" if path else part
            if here not in self.names:
                hits = difflib.get_close_matches(part, self.children.get(path, []), n=1, cutoff=0.6)
                if not hits:
                    return None
                here = f"{path}.{hits[0]}" if path else hits[0]
            path = here
        if difflib.SequenceMatcher(None, name, path).ratio() < 0.8:
            return None
        if re.sub(r"\d+", "#", path) == re.sub(r"\d+", "#", name):
            return None
        return path


def _closest(name: str, names: Sequence[str]) -> str | None:
    """The module a misspelt key meant (see _Suggester.closest), for one key against a list of names."""
    return _Suggester(names).closest(name)


def buffer_only_modules(model: torch.nn.Module) -> list[str]:
    """Modules that hold no parameter and only non-persistent buffers (a model-level `rotary_emb`)."""
    found = []
    for name, module in model.named_modules():
        if not name or any(True for _ in module.parameters()):
            continue
        buffers = list(module.named_buffers())
        persistent = module.state_dict().keys()
        if buffers and not any(key in persistent for key, _ in buffers):
            found.append(name)
    return [n for n in found if not any(n.startswith(other + ".") for other in found)]


def _covered(name: str, device_map: Mapping[str, Any]) -> bool:
    return "" in device_map or any(name == key or name.startswith(key + ".") for key in device_map)


def check_dict_map(
    model: torch.nn.Module, device_map: Mapping[str, Any], visible: int, selected_nvml: Sequence[int]
) -> DictMapReport:
    """Keys, values, coverage and buffer-only modules of a hand-written map, with corrected maps."""
    report = DictMapReport()
    names = _module_names(model)
    unknown = [key for key in device_map if key and key not in names]
    if unknown:
        # accelerate ignores keys that match no module (with a warning): harmless unless the module they meant
        # is left without a device, which the coverage check below reports as the failure.
        suggester = _Suggester(names)
        renamed = {key: suggester.closest(key) for key in unknown}
        unknown_set = set(unknown)
        fixed = {renamed.get(k) or k: v for k, v in device_map.items() if k not in unknown_set or renamed.get(k)}
        hints = [f"{k} -> {v}" if v else f"{k} (no such module)" for k, v in renamed.items()]
        report.warnings.append(Finding("MAP-005", f"the map names modules this model does not have: {_shorten(hints)}",
                                       fixed))  # fmt: skip
    bad_values = sorted({repr(v) for v in device_map.values() if not is_valid_value(v)})
    if bad_values:
        report.failures.append(Finding("MAP-008", f"map values that are no device: {', '.join(bad_values)}"))
    ordinals = sorted({o for v in device_map.values() if (o := cuda_ordinal(v)) is not None})
    beyond = [o for o in ordinals if o >= visible]
    if beyond:
        remap = physical_remap(ordinals, selected_nvml, visible)
        if remap is not None:
            fixed = {k: _renumber(v, remap) for k, v in device_map.items()}
            report.failures.append(Finding(
                "MAP-004",
                f"the map uses GPUs {', '.join(map(str, beyond))} as nvidia-smi numbers them, but this process sees "
                f"cuda:0-{visible - 1} (CUDA_VISIBLE_DEVICES renumbers from 0): "
                + ", ".join(f"{p} -> cuda:{c}" for p, c in remap.items() if p in ordinals),
                fixed,
            ))  # fmt: skip
        else:
            report.failures.append(Finding("MAP-003", f"the map names cuda ordinals {beyond} but this process sees "
                                           f"{visible} GPU(s) (cuda:0-{visible - 1})"))  # fmt: skip
    uncovered = _uncovered_parameters(model, device_map)
    modules = _top_modules(model, uncovered) if uncovered else []
    if uncovered:
        first = next((v for v in device_map.values() if cuda_ordinal(v) is not None), 0)
        fixed = {**device_map, **{name: first for name in modules}}
        report.failures.append(Finding("MAP-006", f"{len(uncovered)} parameters get no device, in {_shorten(modules)}",
                                       fixed, details="accelerate.utils.check_device_map"))  # fmt: skip
    for name in buffer_only_modules(model):
        # A buffer-only module inside a module that is uncovered anyway is placed by that module's fix.
        if not _covered(name, device_map) and not any(name.startswith(m + ".") for m in modules):
            fixed = {**device_map, name: _embed_device(device_map)}
            message = f"{name} holds only non-persistent buffers and the map leaves it out, so it stays on the CPU"
            report.warnings.append(Finding("MAP-007", message, fixed))
    return report


def _renumber(value: Any, remap: Mapping[int, int]) -> Any:
    ordinal = cuda_ordinal(value)
    if ordinal is None or ordinal not in remap:
        return value
    return remap[ordinal] if isinstance(value, int) else f"cuda:{remap[ordinal]}"


def _uncovered_parameters(model: torch.nn.Module, device_map: Mapping[str, Any]) -> list[str]:
    """accelerate's own coverage check; its error lists every parameter the map gives no device."""
    from accelerate.utils import check_device_map

    from diag.noise import captured_warnings

    try:
        with captured_warnings():  # keys that match no module: MAP-005 says so in diag's words
            check_device_map(model, dict(device_map))
    except ValueError as exc:
        listed = str(exc).split(":", 1)[-1]
        return [name.strip() for name in listed.split(",") if name.strip()]
    return []


def _top_modules(model: torch.nn.Module, parameter_names: Sequence[str]) -> list[str]:
    """The outermost modules all of whose parameters are uncovered (`model.layers.2`, not each weight)."""
    uncovered = set(parameter_names)
    tops: list[str] = []
    for name in parameter_names:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            module = model.get_submodule(prefix)
            if all(f"{prefix}.{p}" in uncovered for p, _ in module.named_parameters()):
                break
        else:
            prefix = name
        if prefix not in tops:
            tops.append(prefix)
    return tops


def _embed_device(device_map: Mapping[str, Any]) -> Any:
    for key, value in device_map.items():
        if "embed" in key or "tok_embeddings" in key:
            return value
    return next(iter(device_map.values()), 0)


def _shorten(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


# Renames first (a misspelt key is the cause of the module it leaves uncovered), then renumbering, coverage, buffers.
_FIX_ORDER = ("MAP-005", "MAP-004", "MAP-003", "MAP-008", "MAP-006", "MAP-007")


def correct_dict_map(
    model: torch.nn.Module, device_map: Mapping[str, Any], visible: int, selected_nvml: Sequence[int]
) -> tuple[dict[str, Any] | None, DictMapReport]:
    """Apply each derivable fix in turn and re-check, until the map is clean or no fix is left.

    Returns the corrected map (None when nothing could be corrected, or nothing needed it) and the report of
    the corrected map, so a map is only offered as a fix once the same checks pass on it.
    """
    current = dict(device_map)
    report = check_dict_map(model, current, visible, selected_nvml)
    for _ in range(6):
        findings = sorted([*report.failures, *report.warnings], key=lambda f: _FIX_ORDER.index(f.code))
        fixable = next((f for f in findings if f.fixed_map is not None), None)
        if fixable is None or fixable.fixed_map == current:
            break
        current = dict(fixable.fixed_map)  # type: ignore[arg-type]
        report = check_dict_map(model, current, visible, selected_nvml)
    return (current if current != dict(device_map) else None), report
