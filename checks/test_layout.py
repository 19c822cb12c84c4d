"""Does the launch fit the GPUs: processes against GPUs, lmms-eval's processes with device_map=auto, and the GPUs
VLMEvalKit gives each process? Each slice's device map and memory are checked in test_devicemap.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from diag.checking import Check
from diag.devicemap.autosplit import PROCESSES_ASSERTION, VlmevalkitAssertion
from diag.devicemap.cases import MapCase
from diag.devicemap.plan import GIB
from diag.layout import (
    ProcessCount,
    eval_command_in_one_process,
    eval_command_without_device_map,
    lmms_eval_strategy_in_processes,
    local_processes,
    local_rank,
    span,
    vlmevalkit_layout,
)
from diag.options import DiagOptions
from diag.roots import eval_command_with_processes, model_args_without, recheck_command
from diag.session import state_of
from diag.topology.records import Topology

pytestmark = pytest.mark.diag


@dataclass(frozen=True)
class Launch:
    """How the eval is launched on this node, as the options and the launchers' variables say."""

    options: DiagOptions
    processes: ProcessCount
    local_rank: int | None

    @property
    def kit(self) -> str | None:
        return self.options.kit


@pytest.fixture(scope="module")
def launch(request: pytest.FixtureRequest) -> Launch:
    import os

    options = state_of(request.config).options
    return Launch(options, local_processes(options.processes, os.environ), local_rank(os.environ))


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("" if count == 1 else "s")


def test_processes_do_not_outnumber_the_visible_gpus(
    launch: Launch, diag_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    count, visible = launch.processes.count, len(diag_topology.cuda.devices)
    check.record("launch", {"kit": launch.kit, "processes": count, "processes_from": launch.processes.origin,
                            "local_rank": launch.local_rank, "visible_gpus": visible,
                            "ignored": list(launch.processes.ignored)})  # fmt: skip
    if visible == 0:
        pytest.skip("no GPU is visible to this process (see the environment checks)")
    if count <= visible:
        return
    where = f"{count} processes ({launch.processes.origin}) on {_gpus(visible)}"
    if launch.kit == "vlmevalkit":
        why = f"VLMEvalKit's run.py stops with AssertionError: {PROCESSES_ASSERTION}"
    else:
        beyond = span("cuda:", visible, count)  # a range past a few: 10^9 processes must not build 10^9 names
        why = f"the processes of local rank {visible} and up take {beyond}: CUDA error: invalid device ordinal"
    # To paste: the eval command with its launcher's process count corrected, else this run checked again so.
    corrected = eval_command_with_processes(launch.options.eval_command or (), visible)
    commands = [corrected] if corrected else [
        recheck_command(request.config.invocation_params.args, {"--processes": str(visible)})]  # fmt: skip
    check.fail("LAYOUT-001", f"{where}: {why}",
               f"Launch at most {visible} processes on this node (`torchrun --nproc-per-node {visible}`, "
               f"`accelerate launch --num_processes {visible}`), or select {count} GPUs.",
               subject="processes", commands=commands)  # fmt: skip


def _named_model(request: pytest.FixtureRequest) -> MapCase | None:
    """The map case of the model the eval names (--model, or a known pretrained=); None if it names none."""
    from diag.devicemap.model_args import ModelArgsError, pretrained_from_model_args

    state = state_of(request.config)
    try:
        pretrained = pretrained_from_model_args(state.options.model_args or "")
    except ModelArgsError:
        pretrained = None
    if state.options.model is None and pretrained is None:
        return None  # the device-map checks then plan the default models, which are not the eval's
    return next((c for c in state.map_cases if c.model is not None), None)


def _what_fits(request: pytest.FixtureRequest, topology: Topology, processes: int) -> dict[str, object]:
    """Whether the named model fits one GPU (N processes) or needs a split (one process), by the planner."""
    from diag.devicemap.fit import free_bytes_by_ordinal, gpus_needed
    from diag.fixtures import model_dtype

    case = _named_model(request)
    if case is None:
        return {}
    spec = case.model
    assert spec is not None
    state = state_of(request.config)
    model = state.meta_model(spec, model_dtype(state.options.model_args, spec))
    free = free_bytes_by_ordinal(topology)
    own = [free[o] for o in range(min(processes, len(free)))]
    one_each = gpus_needed(model, spec, "auto", min(own), 1) == 1
    split = gpus_needed(model, spec, "auto", min(free.values()), 1)
    return {"model": spec.name, "fits_one_gpu": one_each, "free_gib_each": round(min(own) / GIB, 1),
            "gpus_needed": split, "visible": len(free)}  # fmt: skip


def test_lmms_eval_does_not_combine_processes_with_device_map_auto(
    launch: Launch, diag_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    from diag.devicemap.model_args import PER_PROCESS_GPU_CLASSES, SPLIT_IN_EVERY_PROCESS_CLASSES

    if launch.kit != "lmms-eval":
        pytest.skip("not an lmms-eval launch (--eval-kit lmms-eval, --model-args or --eval-model)")
    count, visible = launch.processes.count, len(diag_topology.cuda.devices)
    value = lmms_eval_strategy_in_processes(launch.options, count, visible)
    if value is None:
        return
    model_class = launch.options.eval_model
    if model_class in SPLIT_IN_EVERY_PROCESS_CLASSES:
        effect = (f"{model_class} passes device_map={value} in every process, so each of the {count} processes "
                  f"loads its own copy split over all {_gpus(visible)} and evaluates the whole task")  # fmt: skip
    elif model_class in PER_PROCESS_GPU_CLASSES:
        effect = (f"{model_class} ignores device_map={value} with several processes: each loads the whole model on "
                  "cuda:{local_process_index}")  # fmt: skip
    else:
        effect = (f"each process either splits the model over all {_gpus(visible)} (llava_hf and its family) or "
                  "ignores device_map and holds the whole model on one GPU (llava, qwen2_vl, internvl2)")  # fmt: skip
    fits = _what_fits(request, diag_topology, count)
    check.record("layout", {"processes": count, "device_map": value, **fits})
    if model_class in PER_PROCESS_GPU_CLASSES and fits and fits["fits_one_gpu"]:
        return  # upstream runs one copy per GPU, which fits: the device-map checks judge that per-rank map
    one = f"keep {count} processes and remove device_map={value} from --model_args (each process on its own GPU)"
    single = f"run one process with device_map={value}: `python -m lmms_eval` instead of `accelerate launch`"
    one_first = bool(fits) and bool(fits["fits_one_gpu"])
    if not fits:
        summary = (f"Either {single} (a model too large for one GPU), or {one} (a model that fits one GPU). "
                   "Give --model (or a known pretrained=) and diag says which fits.")  # fmt: skip
    elif one_first:
        summary = f"{one[0].upper()}{one[1:]}: {fits['model']} fits one GPU ({fits['free_gib_each']} GiB free)."
    elif fits["gpus_needed"] is not None and int(fits["gpus_needed"]) <= visible:  # type: ignore[call-overload]
        summary = (f"{single[0].upper()}{single[1:]}: {fits['model']} does not fit one GPU; the planner splits it "
                   f"over {fits['gpus_needed']} of the {_gpus(visible)}.")  # fmt: skip
    else:
        need = fits["gpus_needed"] or "more than 64"
        summary = (f"Neither fits: {fits['model']} does not fit one GPU, and needs {need} GPUs like these; select "
                   f"them and {single}.")  # fmt: skip
    commands = _layout_commands(request, launch.options, one_first)
    check.fail("LAYOUT-002", f"{count} processes ({launch.processes.origin}) with device_map={value}: {effect}",
               summary, subject="device_map", details=f"The two layouts that work: {single}; or {one}.",
               commands=commands)  # fmt: skip


def _layout_commands(request: pytest.FixtureRequest, options: DiagOptions, one_first: bool) -> list[str]:
    """The two layouts as commands to paste: the eval command corrected, else this check run re-planned."""
    if options.eval_command is not None:
        found = [eval_command_in_one_process(options.eval_command),
                 eval_command_without_device_map(options.eval_command)]  # fmt: skip
    else:
        args = request.config.invocation_params.args
        found = [recheck_command(args, {"--processes": "1"})]
        if options.model_args is not None:
            found.append(recheck_command(args, {"--model-args": model_args_without(options.model_args, "device_map")}))
    commands = [c for c in found if c]
    return commands[::-1] if one_first else commands


def test_vlmevalkit_gives_each_process_its_own_gpus(launch: Launch, diag_topology: Topology, check: Check) -> None:
    if launch.kit != "vlmevalkit":
        pytest.skip("not a VLMEvalKit launch (--eval-kit vlmevalkit)")
    cvd = diag_topology.selection.cuda_visible_devices
    try:
        layout = vlmevalkit_layout(diag_topology, launch.processes.count)
    except VlmevalkitAssertion:
        pytest.skip("more processes than GPUs (see test_processes_do_not_outnumber_the_visible_gpus)")
    except ValueError as exc:
        check.fail("SPLIT-002", f"VLMEvalKit's run.py cannot read CUDA_VISIBLE_DEVICES={cvd}: {exc}",
                   subject="CUDA_VISIBLE_DEVICES")  # fmt: skip
    slices = [{"local_rank": s.local_rank, "cuda_visible_devices": s.cuda_visible_devices} for s in layout.slices]
    check.record("slices", slices)
    if layout.unused:
        per = len(layout.slices[0].tokens)
        check.warn("LAYOUT-003", f"{len(layout.gpu_list)} GPUs for {len(layout.slices)} processes: run.py gives each "
                   f"{per} and leaves {','.join(layout.unused)} unused")  # fmt: skip
