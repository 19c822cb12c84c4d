"""Does a twin of the model run with the eval's map across these GPUs, without a cross-device step?"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diag.checking import Check
from diag.devicemap.cases import MapCase, write_map
from diag.devicemap.fit import free_bytes_by_ordinal, resolve_map
from diag.devicemap.plan import host_memory_bytes
from diag.fixes import lookup
from diag.roots import PlanView, map_fix_lines
from diag.samedevice.causes import select_gpus_fix
from diag.samedevice.verify import Verdict, check_run, forced_map
from diag.session import state_of

pytestmark = pytest.mark.diag


def _message(verdict: Verdict, map_text: str, code: str = "installed") -> str:
    first = verdict.result
    where = f" in {first.module}" if first.module else ""
    op = f" ({first.op})" if first.op else ""
    cause = verdict.cause.explanation if verdict.cause else ""
    who = "the checkpoint's own code (at tiny width)" if code == "remote" else "the twin"
    return f"{map_text}: {who} fails in {first.stage}{where}{op}: {first.error}. Cause: {cause}"


def test_twin_runs_with_the_map(
    twin_case: tuple[MapCase, bool], meta_model: torch.nn.Module, plan_view: PlanView, check: Check,
    report_dir: Path, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    from diag.twins.remote import cached_problem, twin_note

    case, forced = twin_case
    case_topology = plan_view.topology
    assert case.model is not None and case.source is not None
    if case.model.code == "remote" and (problem := cached_problem(case.model)) is not None:
        pytest.skip(f"{problem.code}: {problem.message} (see test_model_code_runs_here)")
    visible = len(case_topology.cuda.devices)
    if visible == 0:
        pytest.skip("no GPU is visible to this process (see the environment checks)")
    device_map = (
        forced_map(meta_model, visible, case.model.family)
        if forced
        else resolve_map(case.source, meta_model, case_topology, corrected=False)
    )
    if device_map is None:
        pytest.skip("the map itself is not usable (see checks/test_devicemap.py)")
    replan = None
    if case.source.kind == "strategy" and not forced:
        memory: dict[int | str, int] = {ordinal: free for ordinal, free in free_bytes_by_ordinal(case_topology).items()}
        memory["cpu"] = host_memory_bytes()
        replan = (str(case.source.value), memory)
    simulated = visible if case_topology.node.simulated else None
    if simulated is None and not torch.cuda.is_available():
        pytest.skip("torch in this process cannot use the GPUs (see test_torch_is_a_cuda_build_the_driver_supports)")
    verdict = check_run(case.model, device_map, simulated_gpus=simulated, meta_model=meta_model, replan=replan)
    check.record("run", {"map": {k: str(v) for k, v in device_map.items()}, "stage": verdict.result.stage,
                         "seconds": round(verdict.result.seconds, 3),
                         "repeats_skipped": verdict.result.repeats_skipped})  # fmt: skip
    if verdict.result.ok:
        return
    map_text = "a map forced across every GPU" if forced else case.source.text
    assert verdict.cause is not None
    path = write_map(report_dir, f"{case.id}{'-forced' if forced else ''}-fixed", verdict.fixed_map) if (
        verdict.fixed_map is not None) else None  # fmt: skip
    if verdict.verified and path:
        ran = "model" if case.model.code == "remote" else "twin"
        summary = (f"Use the map diag wrote to {path} ({', '.join(verdict.cause.modules) or 'see details'}); the "
                   f"{ran} re-ran with it and passed.{plan_view.note()}")  # fmt: skip
    elif path:
        summary = (
            f"diag's candidate map {path} did not pass either ({verdict.fixed_result and verdict.fixed_result.error})."
        )
    else:
        summary = None
    if summary is None and plan_view.assumes is not None:
        summary = lookup(verdict.cause.code).fix + plan_view.note()
    # Inputs on a GPU the map leaves empty: the fix selects the map's GPUs by their nvidia-smi numbers.
    select = select_gpus_fix(verdict.cause, case.source, case_topology, path) if verdict.verified else None
    kit = state_of(request.config).options.kit
    message = _message(verdict, map_text, case.model.code)
    if case.model.code == "twin":
        message += f" ({twin_note(case.model)})"
    check.fail(verdict.cause.code, message, select[0] if select else summary,
               subject=verdict.result.module or case.model.name, device_map_file=path, verified=verdict.verified,
               commands=map_fix_lines(case.model, path, kit) if path and not select else [],
               env=select[1] if select else plan_view.env,
               details=json.dumps({"first_run": verdict.result.error, "devices": verdict.result.devices}))  # fmt: skip
