"""From a failed run to a verified fix: classify, derive the fixed map, re-run the twin with it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diag.devicemap.plan import GIB, plan_device_map
from diag.samedevice.causes import Cause, classify
from diag.samedevice.run import RunResult, run_twin
from diag.twins import ModelSpec, language_model_layout


@dataclass(frozen=True)
class Verdict:
    """The first run, its cause, and the fix after re-running the twin with it."""

    result: RunResult
    cause: Cause | None = None
    fixed_map: dict[str, Any] | None = None
    fixed_result: RunResult | None = None

    @property
    def verified(self) -> bool:
        return self.fixed_result is not None and self.fixed_result.ok


def forced_map(meta_model: torch.nn.Module, gpus: int, family: str | None = None) -> dict[str, Any]:
    """A map that spreads the model over every GPU, the way its users split it.

    The family's own split where it has one (InternVL-Chat: InternVL's split_model layout, the README's, rotary_emb
    included); else the installed planner with each GPU capped near 1/n of the model. Either way every selected
    GPU holds part of the model.
    """
    if gpus <= 1:
        return {"": 0}
    if family is not None:
        from diag.twins.families import family_named

        own = family_named(family).forced_map(meta_model, gpus)
        if own is not None:
            return own
    from accelerate.utils import compute_module_sizes

    total = compute_module_sizes(meta_model)[""]
    best: dict[str, Any] = {"": 0}
    for slack in (1.0, 1.03, 1.06, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0):
        memory: dict[int | str, int] = {"cpu": 1024 * GIB}
        memory.update(dict.fromkeys(range(gpus), math.ceil(total * slack / gpus)))
        device_map = plan_device_map(meta_model, "sequential", memory)
        if any(v in ("cpu", "disk") for v in device_map.values()):
            continue  # too tight: the tail spilled over; give each GPU a little more
        best = device_map
        break
    return best


def _fails_on_one_gpu(
    spec: ModelSpec,
    first: RunResult,
    device_map: Mapping[str, Any],
    simulated_gpus: int | None,
    meta_model: torch.nn.Module,
    layout: Any,
) -> Cause | None:
    """MODEL-005 when a failure that is not a device error happens with the whole model on one GPU too: the
    model's code does not run here, whatever the map (None otherwise, or when the map already is one GPU)."""
    if first.stage in (None, "build") or first.cross_device or classify(first, meta_model, device_map, layout).code \
            != "FWD-007":  # fmt: skip
        return None
    single: dict[str, Any] = {"": 0}
    alone = first if dict(device_map) == single else run_twin(spec, single, simulated_gpus=simulated_gpus)
    if alone.ok or alone.cross_device or (alone.error or "").split(":")[0] != (first.error or "").split(":")[0]:
        return None
    return Cause("MODEL-005", f"the model's code fails in {alone.stage} with the whole model on cuda:0 too, so "
                              f"not because of the map: {alone.error}")  # fmt: skip


def check_run(
    spec: ModelSpec,
    device_map: Mapping[str, Any],
    *,
    simulated_gpus: int | None,
    meta_model: torch.nn.Module,
    replan: tuple[str, Mapping[int | str, int]] | None = None,
    attempts: int = 3,
) -> Verdict:
    """Run the twin; on failure derive the fix from the cause and re-run until it passes or no fix is left.

    `replan` (strategy, max_memory) lets a split-block cause be fixed by planning again with the class added to
    no_split_module_classes, as the fix tells the user to do.
    """
    first = run_twin(spec, device_map, simulated_gpus=simulated_gpus)
    if first.ok:
        return Verdict(first)
    layout = language_model_layout(meta_model)
    code_failure = _fails_on_one_gpu(spec, first, device_map, simulated_gpus, meta_model, layout)
    if code_failure is not None:
        return Verdict(first, code_failure)
    current, result, cause = dict(device_map), first, None
    extra: tuple[str, ...] = ()
    for _ in range(attempts):
        found = classify(result, meta_model, current, layout)
        cause = cause or found
        if found.no_split_class and replan is not None:
            extra = (*extra, found.no_split_class)
            fixed = plan_device_map(meta_model, replan[0], replan[1], extra_no_split=extra)
        elif found.fixed_map is not None:
            fixed = found.fixed_map
        else:
            return Verdict(first, cause, current if current != dict(device_map) else None, None)
        current = dict(fixed)
        result = run_twin(spec, current, simulated_gpus=simulated_gpus)
        if result.ok:
            break
    return Verdict(first, cause, current, result)
