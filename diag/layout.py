"""The launch layout: how many processes run on this node, and which GPUs each of them gets.

The process count is read from a chain of providers: `--processes`, then what the launchers set
(LOCAL_WORLD_SIZE from torchrun and accelerate, SLURM_NTASKS_PER_NODE from srun), then WORLD_SIZE, else 1.
VLMEvalKit's run.py then narrows CUDA_VISIBLE_DEVICES in each process (`diag.devicemap.autosplit.process_slices`);
a slice is turned into the topology that process sees, so the device-map checks run on it unchanged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diag.devicemap.autosplit import parse_cuda_visible_devices_like_vlmevalkit, process_slices
from diag.roots import Root
from diag.topology.records import CudaDevice, SelectedGpu, Selection, Topology, uuid_key

if TYPE_CHECKING:
    from diag.options import DiagOptions


@dataclass(frozen=True)
class ProcessCount:
    """Processes the eval launches on this node, and where the number was read."""

    count: int
    origin: str  # "--processes", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE" or "default"
    ignored: tuple[str, ...] = ()  # variables that were set but held no usable number, as NAME=value


def _from_env(name: str) -> Callable[[Mapping[str, str]], int | None]:
    def read(env: Mapping[str, str]) -> int | None:
        # SLURM_NTASKS_PER_NODE may carry a repeat count on heterogeneous jobs, as in "2(x3)".
        match = re.fullmatch(r"\s*([0-9]+)(\(x[0-9]+\))?\s*", env.get(name, ""))
        return int(match[1]) if match and int(match[1]) > 0 else None

    return read


_ENV_PROVIDERS = ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE")


def local_processes(option: int | None, env: Mapping[str, str]) -> ProcessCount:
    """The first provider that answers: `--processes`, LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE, WORLD_SIZE, 1."""
    if option is not None:
        return ProcessCount(option, "--processes")
    ignored: list[str] = []
    for name in _ENV_PROVIDERS:
        count = _from_env(name)(env)
        if count is not None:
            return ProcessCount(count, name, tuple(ignored))
        if env.get(name):
            ignored.append(f"{name}={env[name]}")
    return ProcessCount(1, "default", tuple(ignored))


def span(prefix: str, start: int, stop: int, listed: int = 4) -> str:
    """Names `prefix{i}` for i in range(start, stop), summarised past `listed` names: `cuda:8-cuda:999999999`.

    The work and the text are bounded whatever the count: a launch of 10^9 processes is a range, not a list.
    """
    if stop - start <= listed:
        return ", ".join(f"{prefix}{i}" for i in range(start, stop))
    return f"{prefix}{start}-{prefix}{stop - 1} ({stop - start} in all)"


def local_rank(env: Mapping[str, str]) -> int | None:
    """This process's rank on the node (LOCAL_RANK from the launchers, SLURM_LOCALID from srun), if set."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = env.get(name, "").strip()
        if re.fullmatch(r"[0-9]{1,18}", value):  # ASCII digits: "²".isdigit() is true, int("²") raises
            return int(value)
    return None


@dataclass(frozen=True)
class ProcessSlice:
    """The GPUs one local process gets from VLMEvalKit's run.py."""

    local_rank: int
    positions: tuple[int, ...]  # positions in the GPU list (the CUDA ordinals of the launching process)
    tokens: tuple[str, ...]  # the CUDA_VISIBLE_DEVICES entries run.py sets for the process

    @property
    def id(self) -> str:
        return f"rank{self.local_rank}-gpus{','.join(self.tokens)}"

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.tokens)


@dataclass(frozen=True)
class VlmevalkitLayout:
    """run.py's split of the GPU list over the local processes, and the entries it leaves unused."""

    gpu_list: tuple[str, ...]
    slices: tuple[ProcessSlice, ...]
    unused: tuple[str, ...]


def vlmevalkit_layout(topology: Topology, processes: int) -> VlmevalkitLayout:
    """What run.py does with the GPU list for `processes` local processes.

    Raises what run.py raises: ValueError (int() of a `GPU-…`/`MIG-…` entry) and VlmevalkitAssertion (more
    processes than GPUs). Without CUDA_VISIBLE_DEVICES run.py counts every GPU of the node (`nvidia-smi
    --list-gpus`), which is what the launching process sees then.
    """
    cvd = topology.selection.cuda_visible_devices
    if cvd:
        gpu_list = tuple(str(entry) for entry in parse_cuda_visible_devices_like_vlmevalkit(cvd))
    else:
        gpu_list = tuple(str(device.cuda_index) for device in topology.cuda.devices)
    if processes <= 1 or not gpu_list:  # no GPU list: run.py does not slice, and every process sees the same
        only: tuple[ProcessSlice, ...] = (ProcessSlice(0, tuple(range(len(gpu_list))), gpu_list),)
        return VlmevalkitLayout(gpu_list, only, ())
    positions = process_slices(len(gpu_list), processes)
    slices = tuple(
        ProcessSlice(rank, tuple(spans), tuple(gpu_list[p] for p in spans)) for rank, spans in enumerate(positions)
    )
    used = {p for s in slices for p in s.positions}
    return VlmevalkitLayout(gpu_list, slices, tuple(t for p, t in enumerate(gpu_list) if p not in used))


def slice_topology(topology: Topology, piece: ProcessSlice) -> Topology:
    """The topology a process of this slice sees: its GPUs only, numbered cuda:0.. in the slice's order."""
    devices = topology.cuda.devices
    chosen = [devices[p] for p in piece.positions if p < len(devices)]
    renumbered = tuple(CudaDevice(i, d.uuid, d.name, d.memory_total_mib) for i, d in enumerate(chosen))
    new_index = {d.cuda_index: i for i, d in enumerate(chosen)}
    peers = tuple(
        (new_index[a], new_index[b], ok) for a, b, ok in topology.cuda.peer_access if a in new_index and b in new_index
    )
    cuda = replace(topology.cuda, devices=renumbered, peer_access=peers)
    by_uuid = {uuid_key(u): g.nvml_index for g in topology.node.gpus for u in (g.uuid, *g.mig_uuids)}
    entries = tuple(
        SelectedGpu(token, by_uuid.get(uuid_key(device.uuid)), device.uuid)
        for token, device in zip(piece.tokens, chosen, strict=False)
    )
    selection = Selection(
        topology.selection.origin, entries, piece.cuda_visible_devices, topology.selection.cuda_device_order
    )
    return Topology(topology.node, cuda, selection)


def device_map_as_written(options: DiagOptions) -> object:
    """The device_map the eval's --model_args (or --device-map) give, before any class rewrites it."""
    from diag.devicemap.model_args import ModelArgsError, parse_model_args

    try:
        args = parse_model_args(options.model_args or "")
    except ModelArgsError:
        return None  # test_model_args_parse_like_lmms_eval says why
    return args.get("device_map", options.device_map)


def lmms_eval_strategy_in_processes(options: DiagOptions, processes: int, visible: int) -> str | None:
    """The strategy (auto, …) lmms-eval would get in each of several processes: LAYOUT-002's condition."""
    from diag.devicemap.plan import STRATEGIES

    value = device_map_as_written(options)
    if options.kit != "lmms-eval" or processes <= 1 or visible == 0 or value not in STRATEGIES:
        return None
    return str(value)


def layout_root(options: DiagOptions, env: Mapping[str, str], visible: int) -> Root | None:
    """LAYOUT-001 / LAYOUT-002 as root findings: the launch must change, so a plan of this launch is moot."""
    count = local_processes(options.processes, env).count
    if visible and count > visible:
        return Root("LAYOUT-001", skip=f"{count} processes on {visible} visible GPUs: the launch changes with "
                    "LAYOUT-001's fix, and this plan with it (see LAYOUT-001)")  # fmt: skip
    from diag.devicemap.model_args import PER_PROCESS_GPU_CLASSES

    # Classes that load each process on cuda:{local_process_index} whatever device_map says: the per-rank plan is
    # what runs, so it is checked as it is (LAYOUT-002 fails only when the model does not fit one GPU).
    per_rank = options.eval_model in PER_PROCESS_GPU_CLASSES
    if not per_rank and lmms_eval_strategy_in_processes(options, count, visible) is not None:
        return Root("LAYOUT-002", skip="the launch changes with LAYOUT-002's fix (one process, or no device_map), "
                    "which already says where the model fits (see LAYOUT-002)")  # fmt: skip
    return None


def eval_command_in_one_process(command: Sequence[str]) -> str | None:
    """`accelerate launch … -m lmms_eval ARGS` (or torchrun) as `python -m lmms_eval ARGS`; None if not found."""
    parts = list(command)
    for i in range(len(parts) - 1):
        if parts[i] == "-m" and parts[i + 1] == "lmms_eval":
            lead = [t for t in parts[:i] if "=" in t and not t.startswith("-") and t.split("=")[0].isidentifier()]
            return shlex.join([*lead, "python", *parts[i:]])
    return None


def eval_command_without_device_map(command: Sequence[str]) -> str | None:
    """The eval command with device_map removed from its --model_args; None if it has no --model_args."""
    from diag.roots import eval_command_with_model_args, model_args_without

    parts = list(command)
    for i, token in enumerate(parts):
        if token == "--model_args" and i + 1 < len(parts):
            return eval_command_with_model_args(parts, model_args_without(parts[i + 1], "device_map"))
        if token.startswith("--model_args="):
            return eval_command_with_model_args(parts, model_args_without(token.partition("=")[2], "device_map"))
    return None
