"""The "diag" option group: parse-time validation turns a malformed value into a one-line usage error."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from diag.report import DEFAULT_PATH
from diag.topology.files import load_node
from diag.topology.records import Node
from diag.topology.selection import parse_gpus
from diag.topology.simulated import parse_spec


def _simulate(value: str) -> str:
    parse_spec(value)
    return value


MAX_PROCESSES = 4096  # processes on one node: more than any node has GPUs or cores to give them


def _processes(value: str) -> int:
    text = value.strip()
    count = int(text) if re.fullmatch(r"[0-9]{1,18}", text) else 0  # ASCII digits: "²".isdigit() is true
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number of processes, 1 or more")
    if count > MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"{value!r}: more than the {MAX_PROCESSES:,} processes per node diag checks")
    return count


def _check_process_env(env: Mapping[str, str]) -> None:
    """The launcher's per-node process count (LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE, else WORLD_SIZE) bounded
    like --processes, as a usage error; --processes, when given, stands for it instead."""
    from diag.layout import local_processes

    found = local_processes(None, env)
    if found.count > MAX_PROCESSES:
        raise pytest.UsageError(
            f"{found.origin}={env.get(found.origin, '').strip()}: more than the {MAX_PROCESSES:,} processes per "
            "node diag checks; give the processes this node runs with --processes N"
        )


def _report_path(value: str) -> str:
    from diag.report import ReportTargetError, refuse_unless_regular

    if not value.strip():
        raise argparse.ArgumentTypeError("empty path: expected a file for the JSON report")
    if "{" not in value:  # with {rank}/{host} the path is known once they are filled (write_report checks it then)
        try:
            refuse_unless_regular(value)  # /dev/null, a FIFO, a directory, a symlink: never replaced
        except ReportTargetError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _model(value: str) -> str:
    """A preset or a local config: resolved now so a typo is a usage error, not a failed run."""
    from diag.twins import UnknownModel, resolve_model

    try:
        resolve_model(value)
    except UnknownModel as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _device_map(value: str) -> str:
    from diag.devicemap.sources import parse_device_map_option

    # A malformed JSON object, an unreadable map file or one line of a map file is a usage error.
    parse_device_map_option(value)
    return value


EVAL_KITS = ("lmms-eval", "vlmevalkit")


def _eval_kit(value: str) -> str:
    if value not in EVAL_KITS:
        raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(EVAL_KITS)}")
    return value


def _eval_model(value: str) -> str:
    if not value.strip() or value.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected the lmms-eval model class (llava_hf, llava, …)")
    return value.strip()


BACKEND_NAMES = ("vllm", "sglang", "lmdeploy")


def _backend(value: str) -> str:
    if value.strip().lower() not in BACKEND_NAMES:
        raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(BACKEND_NAMES)}")
    return value.strip().lower()


def _eval_command(value: str) -> tuple[str, ...]:
    try:
        parts = shlex.split(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: not a shell command line ({exc})") from None
    if not parts:
        raise argparse.ArgumentTypeError("empty value: expected the eval command line")
    return tuple(parts)


def _eval_kit_version(value: str) -> str:
    from diag.kits import KitVersionError, parse_kit_version

    try:
        return parse_kit_version(value)
    except KitVersionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_kit_version_option(group: pytest.OptionGroup) -> None:
    """--eval-kit-version: which version of the eval kit the emulation assumes (when the kit is not installed)."""
    group.addoption(
        "--eval-kit-version",
        type=_eval_kit_version,
        default=None,
        metavar="VERSION",
        help="the eval kit's version when it is not installed beside diag: a date (2025-04-29), a commit "
        "(3b6bca0f), a release (0.3.0) or head; default: the installed kit's, else the newest behaviour diag knows",
    )


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("diag", "diag: pre-flight checks for multi-GPU evals")
    group.addoption(
        "--gpus",
        type=parse_gpus,
        default=None,
        metavar="IDS",
        help="physical GPUs as nvidia-smi numbers them (4,5,6,7) or GPU-/MIG- UUIDs; "
        "default: what CUDA_VISIBLE_DEVICES selects, else all",
    )
    group.addoption(
        "--simulate",
        type=_simulate,
        default=None,
        metavar="SPEC",
        help="a simulated node, NxNAME-MEMGB (8xA100-80GB); no GPU needed",
    )
    group.addoption(
        "--topology",
        type=load_node,
        default=None,
        metavar="PATH",
        help="replay a node saved by `python -m diag topology`; implies simulation",
    )
    group.addoption(
        "--model",
        type=_model,
        default=None,
        metavar="NAME_OR_PATH",
        help="a preset (internvl2-76b, …) or a local model folder / config.json",
    )
    group.addoption(
        "--trust-remote-code",
        action="store_true",
        default=False,
        help="build a checkpoint that ships its own modelling code (config.json auto_map) from that code, as "
        "from_pretrained(trust_remote_code=True) does: it runs in this process (offline, from the checkpoint folder "
        "or the local HF cache). Without it none of that code runs: diag's own twin stands in where it has one, "
        "else the memory and same-device checks skip (docs/security.md)",
    )
    group.addoption(
        "--device-map",
        type=_device_map,
        default=None,
        metavar="VALUE",
        help="what the eval passes to from_pretrained: auto, balanced, sequential, cpu, cuda:N, N, a JSON object, "
        "or a map file: --device-map map.json or --device-map=@map.json (not `--device-map @map.json`: pytest "
        "reads a lone @file argument as a file of arguments)",
    )
    group.addoption(
        "--model-args",
        default=None,
        metavar="STRING",
        help="an lmms-eval --model_args string, parsed the way lmms-eval parses it",
    )
    group.addoption(
        "--processes",
        type=_processes,
        default=None,
        metavar="N",
        help="processes the eval launches on this node; default LOCAL_WORLD_SIZE / WORLD_SIZE, else 1",
    )
    group.addoption(
        "--eval-kit",
        type=_eval_kit,
        default=None,
        metavar="KIT",
        help="the eval kit the launch follows (lmms-eval, vlmevalkit), for the launch-layout checks; "
        "default: lmms-eval when --model-args or --eval-model is given, else none",
    )
    group.addoption(
        "--eval-model",
        type=_eval_model,
        default=None,
        metavar="CLASS",
        help="lmms-eval's --model (llava_hf, llava, internvl2, qwen2_vl, …): its device_map default and what it "
        "does with several processes",
    )
    group.addoption(
        "--eval-command",
        type=_eval_command,
        default=None,
        metavar="COMMAND",
        help="the eval command line these checks are for, shell-quoted (`python -m diag run` passes it): "
        "fixes then give that command corrected, and the report records it",
    )
    group.addoption(
        "--backend",
        type=_backend,
        default=None,
        metavar="NAME",
        help="the inference backend the eval starts (vllm, sglang, lmdeploy), for the backend checks: lmms-eval's "
        "--model vllm/sglang implies it; with --eval-kit vlmevalkit, vllm is --use-vllm (TP 8/4/2/1 from the GPU "
        "count) and lmdeploy its LMDeploy path (TP over every GPU); sizes and fractions come from --model-args "
        "(tensor_parallel_size=, data_parallel_size=, gpu_memory_utilization=, tp_size=, mem_fraction_static=, tp=)",
    )
    group.addoption(
        "--diag-report",
        type=_report_path,
        default=None,
        metavar="PATH",
        help=f"where the JSON report goes; default {DEFAULT_PATH}",
    )
    _add_kit_version_option(group)


@dataclass(frozen=True)
class DiagOptions:
    gpus: tuple[str, ...] | None
    simulate: str | None
    topology: Node | None
    model: str | None
    device_map: str | None
    model_args: str | None
    processes: int | None
    report_path: str | None
    eval_kit: str | None = None
    eval_model: str | None = None
    eval_command: tuple[str, ...] | None = None
    backend: str | None = None
    eval_kit_version: str | None = None
    trust_remote_code: bool = False

    @property
    def kit(self) -> str | None:
        """The eval kit whose launch rules apply: --eval-kit, else lmms-eval when its options are given."""
        if self.eval_kit is not None:
            return self.eval_kit
        return "lmms-eval" if self.model_args is not None or self.eval_model is not None else None

    @property
    def any_given(self) -> bool:
        return any(v is not None and v is not False for v in vars(self).values())


def read_options(config: pytest.Config) -> DiagOptions:
    options = DiagOptions(
        gpus=config.getoption("gpus"),
        simulate=config.getoption("simulate"),
        topology=config.getoption("topology"),
        model=config.getoption("model"),
        device_map=config.getoption("device_map"),
        model_args=config.getoption("model_args"),
        processes=config.getoption("processes"),
        report_path=config.getoption("diag_report"),
        eval_kit=config.getoption("eval_kit"),
        eval_model=config.getoption("eval_model"),
        eval_command=config.getoption("eval_command"),
        backend=config.getoption("backend"),
        eval_kit_version=config.getoption("eval_kit_version"),
        trust_remote_code=bool(config.getoption("trust_remote_code", False)),
    )
    if options.simulate and options.topology:
        raise pytest.UsageError("--simulate and --topology both describe the node: give one of them")
    if options.processes is None:
        _check_process_env(os.environ)
    return options
