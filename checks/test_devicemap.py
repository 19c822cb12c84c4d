"""Will the eval's device_map load on these GPUs, and fit? Asked before any weight is read."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from diag.checking import Check
from diag.devicemap.cases import MapCase, write_map
from diag.devicemap.fit import capped_max_memory, gpus_needed, plan_rows, resolve_map
from diag.devicemap.validate import (
    check_dict_map,
    correct_dict_map,
    cuda_ordinal,
    resolved_device,
    transformers_rejects,
)
from diag.fixes import lookup
from diag.roots import (
    PlanView,
    command_with_env,
    eval_command_with_model_args,
    load_snippet,
    model_args_without,
    recheck_command,
)
from diag.session import state_of
from diag.topology.records import Topology
from diag.topology.selection import PCI_BUS_ID

pytestmark = pytest.mark.diag


def _usable(check: Check, case: MapCase) -> None:
    """Skip (or fail with its code) a case whose map could not be read; a case without a model still has its map
    checked (the checks that need the model skip in the meta_model fixture, test_model.py says why)."""
    if case.kit is not None:  # which kit version decided, and whether its installed code ran or diag's emulation
        check.record("eval_kit", case.kit.as_dict())
        if case.kit.reason and case.kit.source == "emulation":
            check.warn("KIT-001", f"{case.kit.describe()} assumed: {case.kit.reason}")
    if case.problem is not None and case.source is None:
        if case.problem_code:
            check.fail(case.problem_code, case.problem, case.fix, subject="--model-args",
                       commands=list(case.commands))  # fmt: skip
        pytest.skip(case.problem)


def _gpu_word(visible: int) -> str:
    return f"{visible} GPU" + ("" if visible == 1 else "s")


def test_model_args_parse_like_lmms_eval(diag_topology: Topology, check: Check, request: pytest.FixtureRequest) -> None:
    from diag.devicemap.model_args import ModelArgsError, parse_model_args, parse_model_args_legacy
    from diag.redact import redact_data, redact_text, redacted_model_args

    text = request.config.getoption("model_args")
    if text is None:
        pytest.skip("no --model-args given")
    try:
        parsed = parse_model_args(text)
    except ModelArgsError as exc:  # quoted redacted: a token in the same string must not reach the message
        shown, item = redacted_model_args(text), redact_text(exc.item)
        check.fail("MAP-009", f"lmms-eval would stop before loading the model: --model-args {shown!r}: lmms-eval "
                   f"stops at {item!r} with {exc.upstream_error}", subject="--model-args")  # fmt: skip
    check.record("model_args", redact_data({k: repr(v) for k, v in parsed.items()}))
    if "batch_size" in parsed:  # lmms-eval passes its own --batch_size beside these items: a TypeError in any class
        _batch_size_twice(check, request, text, str(parsed["batch_size"]))
    try:
        legacy = parse_model_args_legacy(text)
    except ModelArgsError:
        return
    if set(legacy) != set(parsed):
        spaced = sorted(k for k in legacy if k not in parsed)
        check.warn("MAP-009", f"lmms-eval before PR #915 keeps the space in {spaced} and rejects the key "
                   "(`Unexpected kwargs`)", "Remove the spaces after the commas in --model_args.")  # fmt: skip


def _batch_size_twice(check: Check, request: pytest.FixtureRequest, text: str, value: str) -> None:
    from diag.redact import redacted_model_args
    from diag.roots import model_args_without, with_options

    options = state_of(request.config).options
    cls = f"lmms-eval's {options.eval_model!r} class" if options.eval_model else "every lmms-eval model class"
    rest = model_args_without(text, "batch_size")
    commands = []
    if options.eval_command is not None:
        commands.append(shlex.join(with_options(options.eval_command, {"--model_args": rest, "--batch_size": value})))
    check.fail("MAP-010", f"--model-args {redacted_model_args(text)!r} sets batch_size={value}: lmms-eval passes its "
               f"own --batch_size too, so {cls} raises TypeError: got multiple values for keyword argument "
               "'batch_size' before the model loads",
               f"Remove batch_size from --model_args and pass --batch_size {value} to lmms-eval.",
               subject="--model-args", commands=commands)  # fmt: skip


def test_device_map_is_accepted_by_transformers(
    map_case: MapCase, case_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    _usable(check, map_case)
    assert map_case.source is not None
    value = map_case.source.value
    if not isinstance(value, str | int) or isinstance(value, bool):
        pytest.skip("a dict map goes through the key and value checks")
    error = transformers_rejects(value)
    if error is None:
        return
    visible = len(case_topology.cuda.devices)
    if isinstance(value, int):
        check.fail("MAP-002", f"{map_case.source.text}: from_pretrained would raise {error}", subject="device_map")
    suggestion = "device_map=auto" if visible > 1 else "device_map=cuda:0"
    options = state_of(request.config).options
    args = request.config.invocation_params.args
    if options.model_args is not None:
        fixed_args = ",".join(a for a in (model_args_without(options.model_args, "device_map"), suggestion) if a)
        where = f"lmms-eval `--model_args {fixed_args}`"
        command = eval_command_with_model_args(options.eval_command, fixed_args) if options.eval_command else None
        commands = [command or recheck_command(args, {"--model-args": fixed_args})]
    else:
        value = suggestion.partition("=")[2]
        where = f'`from_pretrained(..., device_map="{value}")` in the script'
        commands = [recheck_command(args, {"--device-map": value})]
    check.fail(
        "MAP-001",
        f"{map_case.source.text} ({map_case.source.origin}): from_pretrained would raise {error}",
        f"Pass `{suggestion}` ({_gpu_word(visible)} visible): {where}.",
        subject="device_map",
        details=f"transformers' own check ran on the installed version and raised: {error}",
        commands=commands,
    )


def test_device_map_names_only_visible_gpus(
    map_case: MapCase, case_topology: Topology, diag_selection: object, check: Check, report_dir: Path
) -> None:
    _usable(check, map_case)
    assert map_case.source is not None
    value = map_case.source.value
    visible = len(case_topology.cuda.devices)
    if map_case.source.kind == "strategy" or value is None:
        return
    if isinstance(value, dict):
        ordinals = sorted({o for v in value.values() if (o := cuda_ordinal(v)) is not None})
    elif transformers_rejects(value) is None:  # type: ignore[arg-type]
        ordinal = cuda_ordinal(resolved_device(value))  # type: ignore[arg-type]
        ordinals = [] if ordinal is None else [ordinal]
    else:
        pytest.skip("transformers rejects this value (see test_device_map_is_accepted_by_transformers)")
    beyond = [o for o in ordinals if o >= visible]
    if not beyond:
        return
    selected = list(case_topology.selection.nvml_indices)
    if isinstance(value, dict) and set(ordinals) <= set(selected):
        remap = {nvml: cuda for cuda, nvml in enumerate(selected)}
        fixed = {k: (remap[o] if (o := cuda_ordinal(v)) is not None and o in remap else v) for k, v in value.items()}
        path = write_map(report_dir, map_case.id, fixed)
        check.fail("MAP-004", f"the map uses nvidia-smi numbers {beyond}: this process sees cuda:0-{visible - 1} "
                   f"(CUDA_VISIBLE_DEVICES={case_topology.selection.cuda_visible_devices})",
                   f"Use the corrected map {path} (physical GPU n -> cuda ordinal).", device_map_file=path,
                   subject="device_map")  # fmt: skip
    rank = "" if map_case.source.value != "cuda" else " (transformers 5 reads `cuda` as cuda:{LOCAL_RANK})"
    check.fail("MAP-003", f"{map_case.source.text} names cuda:{beyond[0]}{rank}, but this process sees "
               f"{_gpu_word(visible)} (cuda:0-{visible - 1}): CUDA error: invalid device ordinal",
               subject="device_map")  # fmt: skip


def test_device_map_covers_the_model(
    map_case: MapCase, meta_model: torch.nn.Module, case_topology: Topology, check: Check, report_dir: Path
) -> None:
    _usable(check, map_case)
    assert map_case.source is not None
    if not isinstance(map_case.source.value, dict):
        pytest.skip("only a dict map names modules")
    visible = len(case_topology.cuda.devices)
    fixed, _ = correct_dict_map(meta_model, map_case.source.value, visible, case_topology.selection.nvml_indices)
    report = check_dict_map(meta_model, map_case.source.value, visible, case_topology.selection.nvml_indices)
    path = write_map(report_dir, map_case.id, fixed) if fixed is not None else None
    for warning in report.warnings:
        check.warn(warning.code, warning.message, f"Use the corrected map {path}." if path else None)
    failures = [f for f in report.failures if f.code in ("MAP-005", "MAP-006", "MAP-008")]
    if failures:
        first = failures[0]
        check.fail(first.code, "; ".join(f.message for f in failures),
                   f"Use the corrected map {path}." if path else None, device_map_file=path,
                   subject=map_case.source.text)  # fmt: skip


def _select_more(
    request: pytest.FixtureRequest, view: PlanView, need: int | None
) -> tuple[str, dict[str, str], list[str]]:
    """`need` GPUs as a fix: which (named only where no root fix already chose the GPUs), its env, commands."""
    from diag.envfacts import freest_gpus

    options = state_of(request.config).options
    if need is None or view.assumes is not None:
        return "", view.env, []
    free = freest_gpus(view.topology.node, need)
    if len(free) < need:
        return "", {}, []
    ids = ",".join(str(g.nvml_index) for g in free)
    env = {"CUDA_VISIBLE_DEVICES": ids, "CUDA_DEVICE_ORDER": PCI_BUS_ID}
    if options.eval_command is not None:
        return f" (GPUs {ids} are free)", env, [command_with_env(options.eval_command, env)]
    return f" (GPUs {ids} are free)", env, [recheck_command(request.config.invocation_params.args, {"--gpus": ids})]


def test_model_fits_in_gpu_memory(
    map_case: MapCase, meta_model: torch.nn.Module, plan_view: PlanView, check: Check, request: pytest.FixtureRequest
) -> None:
    _usable(check, map_case)
    assert map_case.source is not None and map_case.model is not None
    case_topology = plan_view.topology
    device_map = resolve_map(map_case.source, meta_model, case_topology)
    if device_map is None:
        pytest.skip("the map itself is not usable (see the checks above)")
    rows = plan_rows(meta_model, map_case.model, device_map, case_topology)
    check.record("plan", [row.as_dict() for row in rows])
    if plan_view.assumes is not None:
        check.record("planned_on", {"assumes": plan_view.assumes.code, "env": plan_view.env})
    short = [r for r in rows if r.shortfall_bytes > 0]
    offload = [r for r in rows if r.device in ("cpu", "disk") and r.planned_bytes > 0]
    gib = 1024**3
    gpus = [r for r in rows if r.free_bytes is not None]
    total = sum(r.planned_bytes for r in rows)
    shortfalls = "; ".join(
        f"{r.device} (GPU {r.nvml_index}) holds {r.modules}: {r.planned_bytes / gib:.1f} GiB of weights + "
        f"{r.reserve_bytes / gib:.1f} GiB reserve > {(r.free_bytes or 0) / gib:.1f} GiB free, "
        f"{r.shortfall_bytes / gib:.1f} GiB short"
        for r in short
    )
    strategy = str(map_case.source.value) if map_case.source.kind == "strategy" else "auto"
    largest = max((r.free_bytes or 0 for r in gpus), default=0)
    note = plan_view.note()
    if offload:
        moved = sum(r.planned_bytes for r in offload)
        need = gpus_needed(meta_model, map_case.model, strategy, largest, len(gpus) + 1)
        which, env, commands = _select_more(request, plan_view, need)
        check.fail("MEM-002", f"{moved / gib:.1f} of {total / gib:.1f} GiB of {map_case.model.name} are planned onto "
                   + " and ".join(r.device for r in offload) + f" ({offload[0].modules}): the selected GPUs' free "
                   "memory does not hold the model" + (f"; {shortfalls}" if shortfalls else ""),
                   (f"Select {need} GPUs with {largest / gib:.0f} GiB free{which} (now {len(gpus)}: the planner fits "
                    f"the model on {need})." if need else
                    "No node of such GPUs holds this model in this dtype: use GPUs with more memory, or an 8-bit/4-bit "
                    "load where the eval's model class offers one.") + note,
                   subject=map_case.id if map_case.topology is not None else map_case.model.name,
                   env=env, commands=commands)  # fmt: skip
    if not short:
        return
    worst = max(short, key=lambda r: r.shortfall_bytes)
    kit = state_of(request.config).options.kit
    if kit is not None:  # neither kit passes max_memory to from_pretrained: more or freer GPUs instead
        start = len(gpus) + 1 if map_case.source.kind == "strategy" else 1  # a one-GPU map can spread first
        need = gpus_needed(meta_model, map_case.model, strategy, largest, start)
        which, env, commands = _select_more(request, plan_view, need)
        auto = "" if map_case.source.kind == "strategy" else "pass device_map=auto and "
        how = (
            f"{auto}select {need} GPUs with {largest / gib:.0f} GiB free{which} (the planner then fits it)"
            if need
            else "select GPUs with more free memory, or load it in 8-bit/4-bit"
        )
        reason = {"lmms-eval": "lmms-eval's --model_args cannot pass max_memory to from_pretrained (unknown keys "
                               "raise `AssertionError: Unexpected kwargs`)",
                  "vlmevalkit": "VLMEvalKit builds the model itself and passes no max_memory"}[kit]  # fmt: skip
        check.fail("MEM-001", shortfalls, f"{reason}: {how[0].upper()}{how[1:]}.{note}", subject=worst.device,
                   env=env, commands=commands)  # fmt: skip
    free = {int(r.device.split(":")[1]): r.free_bytes or 0 for r in gpus}
    caps = capped_max_memory(meta_model, map_case.model, strategy, free, rows)
    if caps is None:
        check.fail("MEM-001", shortfalls, lookup("MEM-001").fix + note, subject=worst.device, env=plan_view.env)
    text = "{" + ", ".join(f'{o}: "{c // 1024**2}MiB"' for o, c in caps.items()) + "}"
    checkpoint = map_case.model.checkpoints[0] if map_case.model.checkpoints else map_case.model.name
    snippet = load_snippet(map_case.model.family, checkpoint, repr(strategy), max_memory=text)
    check.fail("MEM-001", shortfalls, f"Cap each GPU to leave room for its reserve: max_memory={text} with "
               f"device_map=\"{strategy}\" in from_pretrained; re-planned with these caps, every GPU fits.{note}",
               subject=worst.device, details="The caps were checked by planning again with the same planner.",
               commands=[snippet], env=plan_view.env)  # fmt: skip


def test_auto_split_uses_only_visible_gpus(
    map_case: MapCase, case_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    import os

    from diag.devicemap.autosplit import SplitError, parse_cuda_visible_devices_like_vlmevalkit

    _usable(check, map_case)
    assert map_case.source is not None
    if map_case.source.origin != "AUTO_SPLIT" or map_case.model is None:
        pytest.skip("AUTO_SPLIT=1 is not set (or the model is not InternVL-Chat)")
    cvd = case_topology.selection.cuda_visible_devices
    if cvd:
        try:
            parse_cuda_visible_devices_like_vlmevalkit(cvd)
        except (ValueError, SplitError) as exc:
            check.fail("SPLIT-002", f"VLMEvalKit's run.py cannot read CUDA_VISIBLE_DEVICES={cvd}: {exc}",
                       subject="CUDA_VISIBLE_DEVICES")  # fmt: skip
    visible = len(case_topology.cuda.devices)
    assert isinstance(map_case.source.value, dict)
    used = sorted({int(v) for v in map_case.source.value.values()})
    check.record("auto_split", {"gpus_used": used, "visible": visible})
    if any(o >= visible for o in used):
        check.fail("SPLIT-001", f"the AUTO_SPLIT map uses cuda:{used[-1]} but this process sees {_gpu_word(visible)}",
                   subject="AUTO_SPLIT")  # fmt: skip
    from diag.devicemap.cases import auto_split_source

    processes = request.config.getoption("processes")
    env = {**os.environ, **({"LOCAL_WORLD_SIZE": str(processes)} if processes else {})}
    if map_case.local_rank is not None:  # one VLMEvalKit process of several, in its own slice
        env["LOCAL_RANK"] = str(map_case.local_rank)
    try:
        older = auto_split_source(map_case.model, case_topology, env, variant="dec09-2024")
    except (AssertionError, ValueError) as exc:
        check.warn("SPLIT-001", f"VLMEvalKit from Dec 9 to Dec 30 2024 (8 GPUs assumed) would fail here: {exc}")
        return
    assert isinstance(older.value, dict)
    old_used = sorted({int(v) for v in older.value.values()})
    if any(o >= visible for o in old_used):
        check.warn("SPLIT-001", f"VLMEvalKit from Dec 9 to Dec 30 2024 assumed 8 GPUs from 0: it would address "
                   f"cuda:{old_used[0]}-{old_used[-1]} here, where this process sees cuda:0-{visible - 1}")  # fmt: skip
