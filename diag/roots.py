"""Root causes: findings that decide what the checks depending on them may say, so one report gives one answer.

No driver (ENV-001), a selected GPU that is not there (ENV-002), a busy selected GPU (ENV-006) and a launch
layout that must change (LAYOUT-001/002) each make the memory plan and the same-device run of the selection
moot. Those checks either skip with "see ENV-00x" or, for a busy GPU with enough free GPUs on the node, plan on
the free GPUs ENV-006's fix names, and say that their fix assumes it. The environment checks compute their own
verdicts from the same functions, so the two cannot disagree.

Also here: the commands a fix gives, built from the run's real values (the eval command corrected, or a full
re-check command), never with a placeholder.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from diag.envfacts import busy_reasons, freest_gpus
from diag.redact import is_assignment
from diag.topology.records import CudaDevice, Gpu, SelectedGpu, Selection, Topology
from diag.topology.selection import PCI_BUS_ID

if TYPE_CHECKING:
    from diag.twins import ModelSpec


@dataclass(frozen=True)
class Root:
    """A root finding. `skip`: why dependent checks skip; `gpus`: the GPUs its fix selects (they re-plan there)."""

    code: str
    skip: str | None = None
    gpus: tuple[int, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        """The environment the root fix sets; empty when it selects no GPUs."""
        if not self.gpus:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in self.gpus), "CUDA_DEVICE_ORDER": PCI_BUS_ID}

    @property
    def note(self) -> str:
        """How a dependent fix says it builds on this one."""
        ids = ",".join(str(g) for g in self.gpus)
        return f"This assumes {self.code}'s fix (CUDA_DEVICE_ORDER={PCI_BUS_ID} CUDA_VISIBLE_DEVICES={ids})"


@dataclass(frozen=True)
class BusyFinding:
    """ENV-006's answer for the selection: the busy selected GPUs and the free GPUs to use instead."""

    busy: tuple[Gpu, ...]
    free: tuple[Gpu, ...]
    wanted: int

    @property
    def enough(self) -> bool:
        return len(self.free) >= self.wanted

    @property
    def ids(self) -> str:
        return ",".join(str(g.nvml_index) for g in self.free)


def busy_finding(topology: Topology) -> BusyFinding | None:
    """The busy selected GPUs and the free GPUs ENV-006 names; None when no selected GPU is busy."""
    node = topology.node
    busy = tuple(node.gpu(i) for i in dict.fromkeys(topology.selection.nvml_indices) if busy_reasons(node.gpu(i)))
    if not busy:
        return None
    wanted = len(topology.selection.found)
    return BusyFinding(busy, tuple(freest_gpus(node, wanted)), wanted)


def node_root(topology: Topology) -> Root | None:
    """The first root finding about the node and the selection: ENV-001, ENV-002, then ENV-006."""
    node, selection = topology.node, topology.selection
    if node.nvml_error is not None or not node.gpus:
        return Root("ENV-001", skip="no GPU node answered, so there is nothing to plan on (see ENV-001)")
    indices = selection.nvml_indices
    if not selection.entries or selection.missing or len(set(indices)) != len(indices):
        return Root("ENV-002", skip="the selected GPUs are not all on this node, so the plan would be for GPUs "
                    "the eval will not have (see ENV-002)")  # fmt: skip
    busy = busy_finding(topology)
    if busy is None:
        return None
    if busy.enough:
        return Root("ENV-006", gpus=tuple(g.nvml_index for g in busy.free))
    return Root("ENV-006", skip=f"GPU {', '.join(str(g.nvml_index) for g in busy.busy)} is busy and this node has "
                "too few free GPUs to plan on instead (see ENV-006)")  # fmt: skip


def on_gpus(topology: Topology, gpus: Sequence[int]) -> Topology:
    """The topology a process started with CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=<gpus> would see."""
    node = topology.node
    chosen = [node.gpu(i) for i in gpus]
    devices = tuple(CudaDevice(o, g.uuid, g.name, g.memory_total_mib) for o, g in enumerate(chosen))
    peers = tuple(
        (a, b, bool(node.p2p_status(ga.nvml_index, gb.nvml_index)))
        for a, ga in enumerate(chosen)
        for b, gb in enumerate(chosen)
        if a != b and node.p2p_status(ga.nvml_index, gb.nvml_index) is not None
    )
    cvd = ",".join(str(i) for i in gpus)
    selection = Selection(
        "CUDA_VISIBLE_DEVICES", tuple(SelectedGpu(str(g.nvml_index), g.nvml_index, g.uuid) for g in chosen), cvd,
        PCI_BUS_ID,
    )  # fmt: skip
    return Topology(node, replace(topology.cuda, devices=devices, peer_access=peers, error=None), selection)


def on_gpus_like(view: Topology, original: Topology, gpus: Sequence[int]) -> Topology:
    """`view` (a VLMEvalKit process's slice of `original`) moved to `gpus`: the same positions in the new list."""
    positions = {d.uuid: d.cuda_index for d in original.cuda.devices}
    picked = [gpus[p] for d in view.cuda.devices if (p := positions.get(d.uuid, -1)) >= 0 and p < len(gpus)]
    return on_gpus(original, picked)


# -- commands a user can paste ----------------------------------------------------------------------------------
def command_with_env(command: Sequence[str], env: Mapping[str, str]) -> str:
    """The eval command with `env` set in front of it; leading assignments of the same names are replaced."""
    parts = list(command)
    lead: list[str] = []
    while parts and is_assignment(parts[0]):
        lead.append(parts.pop(0))
    kept = [t for t in lead if t.partition("=")[0] not in env]
    if parts[:1] == ["env"]:  # `env A=1 cmd`
        parts.pop(0)
        while parts and is_assignment(parts[0]):
            token = parts.pop(0)
            if token.partition("=")[0] not in env:
                kept.append(token)
    settings = [f"{k}={v}" for k, v in sorted(env.items())]
    return shlex.join([*settings, *kept, *parts])


def with_options(args: Sequence[str], changes: Mapping[str, str | None]) -> list[str]:
    """pytest arguments with each option in `changes` set to its value (None: removed); missing ones appended."""
    out: list[str] = []
    seen: set[str] = set()
    tokens = list(args)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.partition("=")[0]
        if name in changes and name.startswith("--"):
            seen.add(name)
            i += 1 if "=" in token else 2
            value = changes[name]
            if value is not None:
                out += [name, value]
            continue
        out.append(token)
        i += 1
    for name, value in changes.items():
        if name not in seen and value is not None:
            out += [name, value]
    return out


def recheck_command(args: Sequence[str], changes: Mapping[str, str | None], env: Mapping[str, str] = {}) -> str:
    """The pytest command of this run with the changed options: what to run to check the fix."""
    settings = [f"{k}={v}" for k, v in sorted(env.items())]
    return shlex.join([*settings, "pytest", *with_options(args, changes)])


def env_fix_commands(
    eval_command: Sequence[str] | None, pytest_args: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """A fix that is an environment change, to paste: the eval command with `env` in front of it when the run knows
    it (--eval-command, which the wrapper passes), else this run's own pytest command with it, to check again."""
    if eval_command is not None:
        return [command_with_env(eval_command, env)]
    return [recheck_command(pytest_args, {}, env)]


# The launchers' options for the processes per node: torchrun's (both spellings) and accelerate launch's.
_PROCESS_OPTIONS = ("--nproc-per-node", "--nproc_per_node", "--num_processes", "--num-processes")


def eval_command_with_processes(command: Sequence[str], count: int) -> str | None:
    """The eval command with its launcher's process count set to `count`; None if it names no such option."""
    parts = list(command)
    for index, token in enumerate(parts):
        name, equals, _ = token.partition("=")
        if name not in _PROCESS_OPTIONS:
            continue
        if equals:
            parts[index] = f"{name}={count}"
        elif index + 1 < len(parts):
            parts[index + 1] = str(count)
        else:
            return None
        return shlex.join(parts)
    return None


def model_args_without(model_args: str, key: str) -> str:
    """An lmms-eval --model_args string with one key removed (split on top-level commas as lmms-eval does)."""
    from diag.devicemap.model_args import _split_top_level

    return ",".join(item for item in _split_top_level(model_args) if item.partition("=")[0].strip() != key)


def __getattr__(name: str) -> frozenset[str]:
    """`REMOTE_CODE_FAMILIES`: the families whose checkpoints ship their modelling code (from_pretrained needs
    trust_remote_code=True), derived from the registry on first use."""
    if name == "REMOTE_CODE_FAMILIES":
        from diag.twins.families import families

        return frozenset(f.name for f in families() if f.remote_code)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_snippet(family: str, checkpoint: str, device_map: str, *, loader: str | None = None, **extra: str) -> str:
    """Python lines that load the checkpoint with this device_map (a Python expression), as the family needs:
    its loading class (`loader` overrides it) and trust_remote_code where its checkpoints ship their code."""
    from diag.twins.families import family_named

    try:
        known = family_named(family)
    except KeyError:
        known = None
    loader = loader or (known.loader if known is not None else "AutoModel")
    args = [repr(checkpoint), f"device_map={device_map}", *(f"{k}={v}" for k, v in extra.items()),
            "torch_dtype=torch.bfloat16"]  # fmt: skip
    if known is not None and known.remote_code:
        args.append("trust_remote_code=True")
    imports = ["import json", "import torch"] if "json." in device_map else ["import torch"]
    return "\n".join([*imports, f"from transformers import {loader}",
                      f"model = {loader}.from_pretrained({', '.join(args)})"])  # fmt: skip


def eval_command_with_model_args(command: Sequence[str], model_args: str) -> str | None:
    """The eval command with its --model_args value replaced; None if it has no --model_args."""
    parts = list(command)
    for i, token in enumerate(parts):
        name, equals, _ = token.partition("=")
        if not (name.startswith("--model_a") and "--model_args".startswith(name)):  # lmms-eval takes abbreviations
            continue
        if equals:
            parts[i] = f"{name}={model_args}"
            return shlex.join(parts)
        if i + 1 < len(parts):
            parts[i + 1] = model_args
            return shlex.join(parts)
    return None


def map_fix_lines(spec: ModelSpec, path: str, kit: str | None) -> list[str]:
    """How to use the fixed map: a loading snippet with the flags the family needs, and what each kit takes."""
    from diag.twins.families import family_named

    family = family_named(spec.family)
    checkpoint = spec.checkpoints[0] if spec.checkpoints else spec.name
    lines = [load_snippet(spec.family, checkpoint, f"json.load(open({path!r}))", loader=family.loader_for(spec.config))]
    lines += family.kit_advice(path)
    if kit != "vlmevalkit":
        lines.append("lmms-eval: --model_args takes only a string device_map; load the model in a script with this "
                     "map")  # fmt: skip
    return lines


@dataclass(frozen=True)
class PlanView:
    """What the memory and same-device checks plan on, and the root fix they build on (if any)."""

    topology: Topology
    assumes: Root | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return self.assumes.env if self.assumes is not None else {}

    def note(self) -> str:
        return f" {self.assumes.note}." if self.assumes is not None else ""


# REMOTE_CODE_FAMILIES is importable too (module __getattr__ above).
__all__ = [
    "BusyFinding",
    "PlanView",
    "Root",
    "busy_finding",
    "command_with_env",
    "eval_command_with_model_args",
    "load_snippet",
    "map_fix_lines",
    "model_args_without",
    "node_root",
    "on_gpus",
    "on_gpus_like",
    "recheck_command",
    "with_options",
]
