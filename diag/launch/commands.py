"""Eval commands read as diag options: which kit, which model, how many processes on this node.

Launchers are parsed with their own parsers (accelerate's `launch_command_parser`, torch's `torchrun`
`get_args_parser`), so `--num_processes=2`, `--nproc_per_node 2` and their spellings mean what they mean to the
launcher. lmms-eval and VLMEvalKit are not installed beside diag, so the few options diag reads from them
(`--model`, `--model_args`, `--data`, `--config`) are declared here as their parsers declare them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

LMMS_EVAL = "lmms-eval"
VLMEVALKIT = "vlmevalkit"

# VLMEvalKit's names for the models diag has presets of, and the checkpoint each loads
# (vlmeval/config.py @00e0cf87: `model_path=` of each partial). Names that equal a preset's hub repo name
# (InternVL2-8B, Qwen2-VL-7B-Instruct) are found from the checkpoint list of the presets as well.
VLMEVALKIT_MODELS: Mapping[str, str] = {
    "llava_v1.5_7b": "liuhaotian/llava-v1.5-7b",
    "llava_v1.5_13b": "liuhaotian/llava-v1.5-13b",
    "llava_next_yi_34b": "llava-hf/llava-v1.6-34b-hf",
    "llava_next_72b": "llava-hf/llava-next-72b-hf",
    "InternVL2-1B": "OpenGVLab/InternVL2-1B",
    "InternVL2-8B": "OpenGVLab/InternVL2-8B",
    "InternVL2-26B": "OpenGVLab/InternVL2-26B",
    "InternVL2-40B": "OpenGVLab/InternVL2-40B",
    "InternVL2-76B": "OpenGVLab/InternVL2-Llama3-76B",
    "cogvlm-chat": "THUDM/cogvlm-chat-hf",
    "Qwen2-VL-2B-Instruct": "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen2-VL-7B-Instruct": "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen2-VL-72B-Instruct": "Qwen/Qwen2-VL-72B-Instruct",
}


class CommandError(ValueError):
    """The command's own options do not parse; one line that names the command part and the problem."""


@dataclass(frozen=True)
class EvalCommand:
    """What a command says about the eval it starts. None: the command does not say (or diag cannot tell)."""

    shape: str  # how diag read it, e.g. "torchrun run.py (VLMEvalKit)"
    kit: str | None = None
    processes: int | None = None
    processes_from: str | None = None
    eval_model: str | None = None  # lmms-eval's --model class, or VLMEvalKit's first --model name
    model_args: str | None = None
    other_models: tuple[str, ...] = ()  # VLMEvalKit: further --model names
    notes: tuple[str, ...] = field(default_factory=tuple)  # what could not be derived, and why
    target: str | None = None  # the module (`lmms_eval`) or script (`run.py`) the command runs, as written
    target_is_module: bool = False


def _parse(parser: argparse.ArgumentParser, args: Sequence[str], what: str) -> argparse.Namespace:
    """parse_known_args without argparse printing usage or exiting: a parse error is a CommandError."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace, _ = parser.parse_known_args(list(args))
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        reason = lines[-1].split("error: ", 1)[-1] if lines else "does not parse"
        raise CommandError(f"{what}: {reason}") from None
    return namespace


def _lmms_eval(args: Sequence[str], shape: str) -> EvalCommand:
    # allow_abbrev as lmms-eval's own parser: `--model_arg X` and `--model_a X` set model_args there too.
    parser = argparse.ArgumentParser(prog="lmms_eval", add_help=False, allow_abbrev=True)
    parser.add_argument("--model")
    parser.add_argument("--model_args")
    parser.add_argument("--config")
    ns = _parse(parser, args, "lmms-eval options")
    notes: tuple[str, ...] = ()
    if ns.config:
        notes = (f"--config {ns.config}: the YAML's models and model_args are not read",)
    return EvalCommand(f"{shape} (lmms-eval)", LMMS_EVAL, eval_model=ns.model, model_args=ns.model_args, notes=notes)


def _vlmevalkit(args: Sequence[str], shape: str) -> EvalCommand:
    parser = argparse.ArgumentParser(prog="run.py", add_help=False, allow_abbrev=False)
    parser.add_argument("--data", nargs="+")
    parser.add_argument("--model", nargs="+")
    parser.add_argument("--config")
    ns = _parse(parser, args, "VLMEvalKit run.py options")
    if ns.config:
        note = f"--config {ns.config}: the JSON's models are not read"
        return EvalCommand(f"{shape} (VLMEvalKit)", VLMEVALKIT, notes=(note,))
    if not ns.data:
        raise CommandError("VLMEvalKit run.py options: --data is required without --config (run.py asserts it)")
    if not ns.model:
        raise CommandError("VLMEvalKit run.py options: --model names no model")
    first, *rest = ns.model
    return EvalCommand(f"{shape} (VLMEvalKit)", VLMEVALKIT, eval_model=first, other_models=tuple(rest))


def _target(module: bool, script: str, args: Sequence[str], shape: str) -> EvalCommand | None:
    """The eval a launcher or python starts: lmms-eval, VLMEvalKit's run.py, or (None) something else."""
    name = PurePath(script).name
    found = None
    if (module and script == "lmms_eval") or (not module and name in ("lmms-eval", "lmms_eval")):
        found = _lmms_eval(args, shape)
    elif not module and name == "run.py":
        found = _vlmevalkit(args, shape)
    return replace(found, target=script, target_is_module=module) if found else None


def _accelerate(command: Sequence[str], env: Mapping[str, str]) -> EvalCommand | None:
    if PurePath(command[0]).name != "accelerate" or command[1:2] != ["launch"]:
        return None
    from accelerate.commands.launch import launch_command_parser

    ns = _parse(launch_command_parser(), command[2:], "accelerate launch options")
    shape = "accelerate launch " + ("-m " if ns.module else "") + PurePath(ns.training_script).name
    found = _target(bool(ns.module), ns.training_script, ns.training_script_args, shape)
    found = found or EvalCommand(shape, notes=(f"{ns.training_script}: not lmms-eval or VLMEvalKit's run.py",))
    if ns.num_processes is not None:
        return replace(found, processes=int(ns.num_processes), processes_from=f"--num_processes {ns.num_processes}")
    note = ("accelerate launch without --num_processes takes the count from its config file, which diag does not "
            "read: give diag --processes N")  # fmt: skip
    return replace(found, notes=(*found.notes, note))


def _torchrun(args: Sequence[str], env: Mapping[str, str], launcher: str) -> EvalCommand:
    from torch.distributed.run import get_args_parser

    ns = _parse(get_args_parser(), args, f"{launcher} options")
    shape = f"{launcher} " + ("-m " if ns.module else "") + PurePath(ns.training_script).name
    found = _target(bool(ns.module), ns.training_script, ns.training_script_args, shape)
    found = found or EvalCommand(shape, notes=(f"{ns.training_script}: not lmms-eval or VLMEvalKit's run.py",))
    per_node = str(ns.nproc_per_node)
    if per_node.isdigit():
        return replace(found, processes=int(per_node), processes_from=f"--nproc-per-node {per_node}")
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if per_node in ("gpu", "auto") and cvd:
        count = len([entry for entry in cvd.split(",") if entry.strip()])
        return replace(found, processes=count, processes_from=f"--nproc-per-node {per_node} (CUDA_VISIBLE_DEVICES)")
    if per_node not in ("gpu", "auto", "cpu", "xpu"):  # counted from the devices: not asked here, no CUDA start
        from torch.distributed.run import determine_local_world_size

        try:
            determine_local_world_size(per_node)  # torchrun's own reading: raises for a value it does not know
        except ValueError as exc:
            raise CommandError(f"{launcher} options: --nproc-per-node {per_node}: {exc}") from None
    note = f"--nproc-per-node {per_node}: one process per GPU torch finds, not derived here; give diag --processes N"
    return replace(found, notes=(*found.notes, note))


def _python(command: Sequence[str], env: Mapping[str, str]) -> EvalCommand | None:
    if not re.fullmatch(r"python[0-9.]*", PurePath(command[0]).name):
        return None
    index = 1
    while index < len(command) and command[index].startswith("-") and command[index] != "-m":
        if command[index] == "-c":
            return None
        index += 2 if command[index] in ("-X", "-W") else 1
    if index >= len(command):
        return None
    if command[index] == "-m":
        if index + 1 >= len(command):
            raise CommandError(f"{command[0]}: -m names no module")
        module, args = command[index + 1], command[index + 2 :]
        if module in ("torch.distributed.run", "torch.distributed.launch"):
            return _torchrun(args, env, f"python -m {module}")
        return _target(True, module, args, f"python -m {module}")
    return _target(False, command[index], command[index + 1 :], f"python {PurePath(command[index]).name}")


def _script(command: Sequence[str], env: Mapping[str, str]) -> EvalCommand | None:
    name = PurePath(command[0]).name
    if name == "torchrun":
        return _torchrun(command[1:], env, "torchrun")
    if name in ("lmms-eval", "lmms_eval"):
        return replace(_lmms_eval(command[1:], name), target="lmms_eval", target_is_module=True)  # what it imports
    return None


RECOGNISERS: tuple[Callable[[Sequence[str], Mapping[str, str]], EvalCommand | None], ...] = (
    _accelerate,
    _script,
    _python,
)


def recognise(command: Sequence[str], env: Mapping[str, str]) -> EvalCommand | None:
    """The first recogniser that knows the command; None for a command none of them knows.

    Raises CommandError when the command is recognised but its options do not parse.
    """
    if not command:
        raise CommandError("the command is empty")
    for recogniser in RECOGNISERS:
        found = recogniser(command, env)
        if found is not None:
            return found
    return None


def vlmevalkit_checkpoint(name: str) -> str | None:
    """The checkpoint a VLMEvalKit model name loads, for the names diag has presets of."""
    return VLMEVALKIT_MODELS.get(name)
