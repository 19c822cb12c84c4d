"""Will the inference engine the eval starts (vLLM, SGLang, LMDeploy) come up on these GPUs? The launcher's processes
against tensor x data parallel, the engine's GPUs against the visible ones, the tensor-parallel size against the
model's attention heads, the memory fraction against each GPU's free memory, the workers' start method, and the
entries of CUDA_VISIBLE_DEVICES the engine reads. Each rule is the backend's own start-up test, judged here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from diag.backends import (
    FORK_ERROR,
    LMDEPLOY,
    LMMS_EVAL_DP_ERROR,
    LMMS_EVAL_WORLD_ERROR,
    SGLANG,
    SGLANG_MEMORY_ERROR,
    SGLANG_UNBALANCED_ERROR,
    TP_SHARDED_VISION,
    VLLM,
    VLLM_HEADS_ERROR,
    VLLM_MEMORY_ERROR,
    VLLM_WORLD_ERROR,
    BackendArgsError,
    BackendLaunch,
    command_with_option,
    divisors_up_to,
    engine_gpus,
    for_run,
    fraction_that_fits,
    kv_heads_problem,
    language_heads,
    model_args_with,
    run_py_in_one_process,
    sglang_unbalanced,
    start_method,
    uuid_entries,
    vision_heads,
    vllm_memory_shortfall,
)
from diag.checking import Check
from diag.envfacts import busy_reasons, freest_gpus
from diag.layout import eval_command_in_one_process
from diag.options import DiagOptions
from diag.roots import command_with_env, eval_command_with_model_args, eval_command_with_processes, recheck_command
from diag.session import state_of
from diag.topology.records import Topology
from diag.topology.selection import PCI_BUS_ID

if TYPE_CHECKING:
    from diag.twins import ModelSpec

pytestmark = pytest.mark.diag

# The options of the server commands that set each setting, as the backends spell them.
_SERVER_OPTION = {
    "tp": {VLLM: "--tensor-parallel-size", SGLANG: "--tp", LMDEPLOY: "--tp"},
    "fraction": {VLLM: "--gpu-memory-utilization", SGLANG: "--mem-fraction-static",
                 LMDEPLOY: "--cache-max-entry-count"},
}  # fmt: skip
_NAME = {VLLM: "vLLM", SGLANG: "SGLang", LMDEPLOY: "LMDeploy"}
_TP_NAMES = ("--tensor-parallel-size", "-tp", "--tp", "--tp-size")
_FRACTION_NAMES = ("--gpu-memory-utilization", "--mem-fraction-static", "--cache-max-entry-count")


@dataclass(frozen=True)
class Engine:
    """The backend launch of this run (or why its settings cannot be read) and the options it came from."""

    launch: BackendLaunch | None
    error: str | None
    options: DiagOptions
    args: tuple[str, ...]  # this run's pytest arguments, for re-check commands


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Engine:
    options = state_of(request.config).options
    args = tuple(request.config.invocation_params.args)
    try:
        launch = for_run(options, os.environ)
    except BackendArgsError as exc:
        return Engine(None, str(exc), options, args)
    if launch is None:
        pytest.skip("the eval starts no inference backend (lmms-eval --model vllm/sglang, VLMEvalKit --use-vllm, "
                    "vllm serve, sglang.launch_server, lmdeploy; or --backend)")  # fmt: skip
    return Engine(launch, None, options, args)


def _launch(engine: Engine) -> BackendLaunch:
    if engine.launch is None:
        pytest.skip(f"the backend's settings cannot be read ({engine.error}): see the parallel-size check")
    return engine.launch


def _visible(topology: Topology, launch: BackendLaunch) -> int:
    """GPUs each engine process sees: VLMEvalKit's run.py slices the visible GPUs per local process."""
    visible = len(topology.cuda.devices)
    if visible == 0:
        pytest.skip("no GPU is visible to this process (see the environment checks)")
    if launch.kit == "vlmevalkit" and launch.processes > 1:
        return max(visible // launch.processes, 0) or visible
    return visible


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("" if count == 1 else "s")


# -- fix commands ------------------------------------------------------------------------------------------------
def _with_setting(engine: Engine, key: str, model_args_key: str, value: str) -> str | None:
    """The eval command (or this check run) with one backend setting changed; None when the kit takes it from
    somewhere a command cannot reach (VLMEvalKit's class arguments)."""
    launch, command = engine.launch, engine.options.eval_command
    assert launch is not None
    if launch.kit == "vlmevalkit":
        return None
    if command is not None and launch.kit is None:
        names = _TP_NAMES if key == "tp" else _FRACTION_NAMES
        return command_with_option(command, [_SERVER_OPTION[key][launch.backend], *names], value)
    new_args = model_args_with(launch.model_args if command is not None else engine.options.model_args,
                               {model_args_key: value})  # fmt: skip
    if command is not None:
        return eval_command_with_model_args(command, new_args)
    return recheck_command(engine.args, {"--model-args": new_args})


def _with_gpus(engine: Engine, gpus: list[int]) -> str:
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus), "CUDA_DEVICE_ORDER": PCI_BUS_ID}
    if engine.options.eval_command is not None:
        return command_with_env(engine.options.eval_command, env)
    return recheck_command(engine.args, {"--gpus": env["CUDA_VISIBLE_DEVICES"]})


def _with_processes(engine: Engine, count: int) -> str | None:
    if engine.options.eval_command is not None:
        return eval_command_with_processes(engine.options.eval_command, count)
    return recheck_command(engine.args, {"--processes": str(count)})


def _tp_key(launch: BackendLaunch) -> str:
    return "tp" if launch.backend == LMDEPLOY else "tensor_parallel_size"


# -- the checks --------------------------------------------------------------------------------------------------
def test_backend_processes_match_the_engine_ranks(engine: Engine, diag_topology: Topology, check: Check) -> None:
    launch = _launch(engine)
    visible = len(diag_topology.cuda.devices)
    check.record("backend", {"backend": launch.backend, "via": launch.via, "model": launch.model,
                             "tensor_parallel_size": launch.tp, "tp_from": launch.tp_from, "auto_tp": launch.auto_tp,
                             "data_parallel_size": launch.dp, "memory_fraction": launch.fraction,
                             "memory_fraction_from": launch.fraction_from, "processes": launch.processes,
                             "processes_from": launch.processes_from, "launcher": launch.launcher,
                             "notes": list(launch.notes)})  # fmt: skip
    if launch.backend != VLLM:
        return
    if launch.kit == "lmms-eval":
        tp, dp = launch.tensor_parallel(visible), launch.dp
        if launch.processes > 1 and launch.processes != tp * dp:
            commands = [c for c in (_with_processes(engine, tp * dp),) if c and tp * dp > 1]
            if dp == 1 and engine.options.eval_command is not None:
                commands += [c for c in (eval_command_in_one_process(engine.options.eval_command),) if c]
            elif dp == 1:
                commands.append(recheck_command(engine.args, {"--processes": "1"}))
            check.fail("BACKEND-001", f"{launch.processes} processes ({launch.processes_from}) for lmms-eval's vllm "
                       f"class with tensor_parallel_size={tp} x data_parallel_size={dp} = {tp * dp}: with more than "
                       "one process it runs vLLM as an external launcher, one engine rank per process, and stops "
                       f"with {LMMS_EVAL_WORLD_ERROR.format(want=tp * dp, got=launch.processes)}",
                       f"Launch {tp * dp} processes (tensor_parallel_size x data_parallel_size)"
                       + (", or one process and let vLLM start its own workers." if dp == 1 else "."),
                       subject="processes", commands=commands)  # fmt: skip
        if launch.processes == 1 and dp > 1:
            args = model_args_with(launch.model_args or engine.options.model_args, {"data_parallel_size": None})
            commands = [c for c in (_with_setting(engine, "dp", "data_parallel_size", "1"),) if c]
            if engine.options.eval_command is not None:
                commands = [c for c in (eval_command_with_model_args(engine.options.eval_command, args),) if c]
            check.fail("BACKEND-002", f"data_parallel_size={dp} ({launch.dp_from}) in one process: lmms-eval's vllm "
                       f"class runs data parallelism as launcher processes and stops with {LMMS_EVAL_DP_ERROR}",
                       f"Start {tp * dp} processes (`accelerate launch --num_processes {tp * dp} -m lmms_eval …`), or "
                       "drop data_parallel_size.", subject="data_parallel_size", commands=commands)  # fmt: skip
    elif launch.kit == "vlmevalkit" and launch.processes > 1:
        each = max(visible // launch.processes, 1)
        tp = launch.tensor_parallel(each)
        one = run_py_in_one_process(engine.options.eval_command or ())
        check.fail("BACKEND-001", f"{launch.processes} processes ({launch.processes_from}) of VLMEvalKit's run.py "
                   f"with --use-vllm: each starts vLLM's LLM() with tp={tp} inside a torch.distributed world of "
                   f"{launch.processes} and stops with {VLLM_WORLD_ERROR.format(got=launch.processes, tp=tp)}",
                   "Run VLMEvalKit with --use-vllm as one process (`python run.py …`): vLLM spreads the model over "
                   "the GPUs itself.", subject="processes",
                   commands=[one] if one else [recheck_command(engine.args, {"--processes": "1"})])  # fmt: skip


def test_backend_parallel_size_fits_the_visible_gpus(engine: Engine, diag_topology: Topology, check: Check) -> None:
    if engine.launch is None:
        check.fail("BACKEND-003", f"the backend's launch size cannot be read: {engine.error}",
                   "Give tensor_parallel_size / data_parallel_size as whole numbers of GPUs and the memory fraction "
                   "as a number between 0 and 1.", subject="backend")  # fmt: skip
    launch = engine.launch
    visible = _visible(diag_topology, launch)
    tp, dp = launch.tensor_parallel(visible), launch.dp
    need = tp * dp
    if need > visible:
        fits = max(visible // dp, 1)
        commands = [c for c in (_with_setting(engine, "tp", _tp_key(launch), str(fits)),) if c]
        node_free = [g.nvml_index for g in freest_gpus(diag_topology.node, need)]
        if len(node_free) >= need:
            commands.append(_with_gpus(engine, node_free))
        check.fail("BACKEND-003", f"{launch.via}: {launch.tp_said(visible)} x data_parallel_size={dp} = {need} GPUs, "
                   f"but the process sees {_gpus(visible)}: the engine's rank {visible} has no GPU and stops with "
                   "`CUDA error: invalid device ordinal` (vLLM: `local_world_size must be less than or equal to the "
                   "number of visible devices`)",
                   f"Lower the tensor-parallel size to {fits} (with data parallelism for the rest), or select "
                   f"{need} GPUs" + (f" ({','.join(map(str, node_free))} are free)." if len(node_free) >= need
                                     else "."), subject="tensor_parallel_size", commands=commands)  # fmt: skip
    if launch.auto_tp == "vlmevalkit" and need < visible:
        check.warn("BACKEND-003", f"{launch.via}: VLMEvalKit picks tp={tp} from {_gpus(visible)} (8/4/2/1), so "
                   f"{visible - need} of them stay idle", f"Select {need} GPUs (CUDA_VISIBLE_DEVICES) and run a "
                   "second eval on the others.")  # fmt: skip


def _model_spec(launch: BackendLaunch) -> tuple[ModelSpec, str]:
    """The ModelSpec of the engine's model and how diag knows it (the checkpoint's config or diag's preset)."""
    from diag.twins import UnknownModel, model_for_checkpoint, resolve_model

    if launch.model is None:
        pytest.skip("the engine's model is not named (give --model, or model= in --model_args): heads not checked")
    try:
        spec = resolve_model(launch.model) if launch.model_from == "--model" else model_for_checkpoint(launch.model)
    except UnknownModel as exc:
        pytest.skip(f"{exc}: heads not checked")
    if spec is None:
        pytest.skip(f"{launch.model}: its config is neither on this machine nor one of diag's presets: heads not "
                    "checked; give diag the checkpoint's config with --model PATH")  # fmt: skip
    if spec.source == "preset":
        said = f"diag's preset {spec.name} standing in for {launch.model}'s config.json, which is not on this machine"
    else:
        said = f"{launch.model}'s own config.json ({spec.config_path})"
    return spec, said


def test_tensor_parallel_divides_the_language_model_heads(
    engine: Engine, diag_topology: Topology, check: Check
) -> None:
    launch = _launch(engine)
    visible = _visible(diag_topology, launch)
    spec, said = _model_spec(launch)
    config = spec.config
    heads = language_heads(config)
    if heads is None:
        pytest.skip(f"{said} gives no num_attention_heads: heads not checked")
    tp = launch.tensor_parallel(visible)
    check.record("heads", {"language_model": heads.heads, "kv_heads": heads.kv_heads, "tensor_parallel_size": tp,
                           "config": said})  # fmt: skip
    problem = None
    if heads.heads % tp:
        if launch.backend == LMDEPLOY:
            rule = f"LMDeploy's TurboMind asserts head_num % tensor_para_size == 0 ({heads.heads} % {tp})"
        else:
            rule = f"{_NAME[launch.backend]} stops with {VLLM_HEADS_ERROR.format(heads=heads.heads, tp=tp)[:-1]}"
        problem = f"{heads.heads} attention heads ({heads.where}) do not split over tp={tp}: {rule}"
    elif launch.backend != LMDEPLOY and heads.kv_heads and (kv_text := kv_heads_problem(heads.kv_heads, tp)):
        where = heads.where.replace("num_attention_heads", "num_key_value_heads")
        problem = (f"{kv_text} ({where}): {_NAME[launch.backend]} splits KV heads evenly below tp and replicates them "
                   "evenly from tp up")  # fmt: skip
    if problem is None:
        return
    vision = vision_heads(config)
    sharded = vision.heads if vision and spec.family in TP_SHARDED_VISION and launch.backend != LMDEPLOY else None
    kv = heads.kv_heads if launch.backend != LMDEPLOY else None
    good = divisors_up_to(heads.heads, visible, kv, sharded)
    _fail_tp(engine, launch, check, "BACKEND-004", f"{launch.via}, {launch.tp_said(visible)}: {problem}. The heads are "
             f"from {said}", good, diag_topology)  # fmt: skip


def test_tensor_parallel_divides_the_vision_tower_heads(engine: Engine, diag_topology: Topology, check: Check) -> None:
    launch = _launch(engine)
    visible = _visible(diag_topology, launch)
    spec, said = _model_spec(launch)
    family = spec.family
    if launch.backend == LMDEPLOY:
        pytest.skip("LMDeploy runs the vision tower outside its tensor-parallel engine: no head split to check")
    if family not in TP_SHARDED_VISION:
        pytest.skip(f"{family}: diag does not know how {launch.backend} splits this vision tower")
    vision = vision_heads(spec.config)
    if vision is None:
        pytest.skip(f"{said} gives no vision_config heads")
    tp = launch.tensor_parallel(visible)
    check.record("heads", {"vision_tower": vision.heads, "tensor_parallel_size": tp, "config": said})
    if vision.heads % tp == 0:
        return
    lm = language_heads(spec.config)
    good = divisors_up_to(lm.heads if lm else vision.heads, visible, lm.kv_heads if lm else None, vision.heads)
    name = _NAME[launch.backend]
    _fail_tp(engine, launch, check, "BACKEND-005", f"{launch.via}, {launch.tp_said(visible)}: the vision tower's "
             f"{vision.heads} heads ({vision.where}) do not split over tp={tp}; {name} shards it by head "
             f"and stops with `AssertionError: {vision.heads} is not divisible by {tp}` (vLLM before PR #57119 lets "
             f"no Qwen vision tower fall back). The heads are from {said}", good, diag_topology)  # fmt: skip


def _fail_tp(
    engine: Engine, launch: BackendLaunch, check: Check, code: str, message: str, good: list[int], topology: Topology
) -> None:
    visible = len(topology.cuda.devices)
    if launch.auto_tp == "vlmevalkit":
        good = [t for t in good if t in (1, 2, 4, 8)]
    best = max(good) if good else 1
    dp = max(visible // best, 1)
    commands: list[str] = []
    if launch.auto_tp is not None:  # the kit takes tp from the GPU count: select `best` GPUs
        selected = [e.nvml_index for e in topology.selection.found if e.nvml_index is not None][:best]
        if len(selected) == best:
            commands.append(_with_gpus(engine, selected))
        summary = (f"Select {_gpus(best)} for the engine (tensor-parallel sizes that divide the heads: "
                   f"{', '.join(map(str, good))}); {launch.via} takes its tp from the GPU count.")  # fmt: skip
    else:
        command = _with_setting(engine, "tp", _tp_key(launch), str(best))
        commands += [command] if command else []
        extra = ""
        if dp > 1 and launch.kit == "lmms-eval" and launch.backend == VLLM:
            extra = f"; data_parallel_size={dp} (with tp x dp launcher processes) can use the other GPUs"
        elif dp > 1 and launch.kit is None and launch.backend in (VLLM, SGLANG):
            extra = f"; --data-parallel-size {dp} can use the other GPUs"
        summary = (f"Use tensor_parallel_size={best} (sizes up to {visible} that divide the heads: "
                   f"{', '.join(map(str, good))}){extra}.")  # fmt: skip
    check.fail(code, message, summary, subject="tensor_parallel_size", commands=commands)


def test_backend_memory_fraction_fits_the_free_memory(engine: Engine, diag_topology: Topology, check: Check) -> None:
    launch = _launch(engine)
    visible = _visible(diag_topology, launch)
    need = min(launch.gpus_needed(visible), visible)
    gpus = engine_gpus(diag_topology, need)
    if not gpus:
        pytest.skip("the engine's GPUs are not on this node's NVML list (see the environment checks)")
    node = diag_topology.node
    free_ids = [g.nvml_index for g in freest_gpus(node, need)]
    other = _with_gpus(engine, free_ids) if len(free_ids) >= need else None
    check.record("engine_gpus", [{"gpu": g.nvml_index, "free_mib": g.memory_free_mib, "total_mib": g.memory_total_mib}
                                 for g in gpus])  # fmt: skip
    if launch.backend == VLLM and launch.fraction is not None:
        short = [(g, s) for g in gpus if (s := vllm_memory_shortfall(g, launch.fraction))]
        if not short:
            return
        gpu, (free, total, wanted) = short[0]
        listed = "; ".join(f"GPU {g.nvml_index}: {g.memory_free_mib} MiB free of {g.memory_total_mib} MiB, "
                           f"{launch.fraction} x total = {round(s[2] * 1024)} MiB wanted"
                           + (f" ({', '.join(busy_reasons(g))})" if busy_reasons(g) else "")
                           for g, s in short)  # fmt: skip
        lower = fraction_that_fits(gpus)
        commands = [c for c in (other,) if c]
        lowered = _with_setting(engine, "fraction", "gpu_memory_utilization", f"{lower:.2f}") if lower >= 0.05 else None
        commands += [lowered] if lowered else []
        fixes = [f"select free GPUs ({','.join(map(str, free_ids))})"] if other else []
        if lowered:
            fixes.append(f"lower gpu_memory_utilization to {lower:.2f} ({round(lower * gpu.memory_total_mib)} MiB "
                         "per GPU for weights, activations and KV cache)")  # fmt: skip
        elif launch.kit == "vlmevalkit" and lower >= 0.05:
            fixes.append(f"set gpu_utils={lower:.2f} for the model in vlmeval/config.py")
        fixes.append("or wait for the other job")
        check.fail("BACKEND-006", f"{launch.via}, {launch.fraction_name}={launch.fraction} ({launch.fraction_from}): "
                   f"{listed}. vLLM stops at start-up with "
                   f"{VLLM_MEMORY_ERROR.format(free=free, total=total, fraction=launch.fraction, wanted=wanted)}",
                   _sentence("; ".join(fixes[:-1]) + f", {fixes[-1]}.") if len(fixes) > 1
                   else "Wait for the other job.", subject=f"GPU {gpu.nvml_index}", commands=commands)  # fmt: skip
    busy = [g for g in gpus if busy_reasons(g)]
    if launch.backend == SGLANG:
        problems = []
        if sglang_unbalanced(gpus):
            problems.append(f"SGLang stops with `{SGLANG_UNBALANCED_ERROR}` (the least free memory, "
                            f"{min(g.memory_free_mib for g in gpus)} MiB, is below 0.9 of the most, "
                            f"{max(g.memory_free_mib for g in gpus)} MiB)")  # fmt: skip
        if launch.fraction is not None:
            full = [g for g in gpus if g.memory_used_mib >= launch.fraction * g.memory_total_mib]
            if full:
                problems.append(f"GPU {', '.join(str(g.nvml_index) for g in full)} already has "
                                f"{launch.fraction_name}={launch.fraction} of its memory used by others, so the KV "
                                f"pool gets nothing: `{SGLANG_MEMORY_ERROR}`")  # fmt: skip
        if problems:
            where = "; ".join(
                f"GPU {g.nvml_index}: {g.memory_free_mib} MiB free of {g.memory_total_mib} MiB"
                + (f" ({', '.join(busy_reasons(g))})" if busy_reasons(g) else "")
                for g in gpus
            )
            check.fail("BACKEND-007", f"{launch.via}: {where}. " + "; ".join(problems),
                       f"Select free GPUs ({','.join(map(str, free_ids))})." if other else "Wait for the other job.",
                       subject="GPU memory", commands=[other] if other else [])  # fmt: skip
    if launch.backend == LMDEPLOY and busy:
        check.warn(
            "BACKEND-007",
            f"{launch.via}: GPU {', '.join(str(g.nvml_index) for g in busy)} is busy "
            f"({'; '.join(r for g in busy for r in busy_reasons(g))}); LMDeploy sizes its cache as "
            f"{launch.fraction_name}={launch.fraction} of the free memory, so it runs with a smaller cache",
        )


def test_backend_workers_start_with_spawn(engine: Engine, diag_topology: Topology, check: Check) -> None:
    launch = _launch(engine)
    if launch.backend != VLLM:
        pytest.skip(f"{launch.backend}: the start-method rule is vLLM's")
    visible = _visible(diag_topology, launch)
    method = start_method()
    check.record("start_method", {"VLLM_WORKER_MULTIPROC_METHOD": method, "forced_spawn": launch.spawn_forced})
    if launch.spawn_forced or launch.gpus_needed(visible) <= 1 or method == "spawn":
        return
    if launch.kit != "vlmevalkit" and method != "fork":
        return  # vLLM's own default; only VLMEvalKit's path touches CUDA before the engine starts
    env = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    fix = "export VLLM_WORKER_MULTIPROC_METHOD=spawn before the eval starts"
    if engine.options.eval_command is not None:
        fix += f": {command_with_env(engine.options.eval_command, env)}"
    said = "is not set" if method is None else f"is {method}"
    check.warn("BACKEND-008", f"{launch.via} with {launch.tp_said(visible)}: VLLM_WORKER_MULTIPROC_METHOD {said}; "
               f"workers forked after the parent touched CUDA stop with `{FORK_ERROR}`"
               + (" (VLMEvalKit warns about it but does not set it)" if launch.kit == "vlmevalkit" else ""),
               fix)  # fmt: skip


def test_backend_can_use_the_visible_devices(engine: Engine, diag_topology: Topology, check: Check) -> None:
    launch = _launch(engine)
    visible = _visible(diag_topology, launch)
    selection = diag_topology.selection
    cvd = selection.cuda_visible_devices
    uuids = uuid_entries(cvd)
    migs = [e for e in selection.found if (e.uuid or "").upper().startswith("MIG-")]
    tp = launch.tensor_parallel(visible)
    indices = [e.nvml_index for e in selection.found if e.nvml_index is not None]
    by_index = [] if migs else list(dict.fromkeys(indices))
    commands = [_with_gpus(engine, by_index)] if by_index else []
    if launch.backend == VLLM and uuids:
        check.fail("BACKEND-009", f"CUDA_VISIBLE_DEVICES={cvd}: vLLM reads every entry with int() and stops with "
                   f"`ValueError: invalid literal for int() with base 10: '{uuids[0]}'`",
                   (f"Select the GPUs by index: CUDA_DEVICE_ORDER={PCI_BUS_ID} CUDA_VISIBLE_DEVICES="
                    f"{','.join(map(str, by_index))}." if by_index else "Run the engine in a container that exposes "
                    "the MIG instance as device 0, with tensor_parallel_size 1."),
                   subject="CUDA_VISIBLE_DEVICES", commands=commands)  # fmt: skip
    if migs and (tp > 1 or len(migs) > 1):
        check.fail("BACKEND-009", f"{launch.via}, {launch.tp_said(visible)}: the selection holds MIG instances "
                   f"({', '.join(e.token for e in migs)}); a process sees at most one MIG instance, so "
                   f"{_NAME[launch.backend]} cannot start {tp} tensor-parallel ranks over them",
                   "Run the engine on one MIG instance with tensor_parallel_size 1, or on whole GPUs (MIG mode off) "
                   "selected by index.", subject="CUDA_VISIBLE_DEVICES")  # fmt: skip
