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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diag.backends import BackendLaunch

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


# -- inference backends (vLLM, SGLang, LMDeploy) ----------------------------------------------------------------
# Kept apart from the recognisers above: the launch of an engine, read from an lmms-eval / VLMEvalKit command that
# starts one, or from a server command (`vllm serve`, `python -m sglang.launch_server`, `lmdeploy serve`).
_SERVER_MODULES = {
    "vllm.entrypoints.openai.api_server": "vllm",
    "vllm.entrypoints.api_server": "vllm",
    "sglang.launch_server": "sglang",
}


def _server_options(args: Sequence[str], what: str) -> argparse.Namespace:
    """The sizes and fraction a server command gives; `_` in option names reads as `-` (vLLM accepts both)."""
    parser = argparse.ArgumentParser(prog=what, add_help=False, allow_abbrev=False)
    parser.add_argument("--model", "--model-path")
    parser.add_argument("--tensor-parallel-size", "-tp", "--tp", "--tp-size", dest="tp")
    parser.add_argument("--data-parallel-size", "-dp", "--dp", "--dp-size", dest="dp")
    parser.add_argument("--gpu-memory-utilization", "--mem-fraction-static", "--cache-max-entry-count",
                        dest="fraction")  # fmt: skip
    normal = [a.replace("_", "-") if a.startswith("--") and "=" not in a else
              a.partition("=")[0].replace("_", "-") + a.partition("=")[1] + a.partition("=")[2]
              if a.startswith("--") else a for a in args]  # fmt: skip
    return _parse(parser, normal, f"{what} options")


def server_launch(command: Sequence[str]) -> BackendLaunch | None:
    """A `vllm serve` / `python -m vllm.entrypoints.openai.api_server` / `python -m sglang.launch_server` /
    `lmdeploy serve api_server` command as a BackendLaunch; None for any other command."""
    from diag.backends import FRACTION_NAME, VLLM_FRACTION, BackendArgsError, BackendLaunch, _fraction, _whole

    command = list(command)  # a tuple from --eval-command compares unequal to the lists below
    if not command:
        return None
    name = PurePath(command[0]).name
    model: str | None = None
    if name == "vllm" and command[1:2] == ["serve"]:
        backend, via, rest = "vllm", "vllm serve", list(command[2:])
        if rest and not rest[0].startswith("-"):
            model, rest = rest[0], rest[1:]
    elif name == "lmdeploy" and command[1:3] == ["serve", "api_server"]:
        backend, via, rest = "lmdeploy", "lmdeploy serve api_server", list(command[3:])
        if rest and not rest[0].startswith("-"):
            model, rest = rest[0], rest[1:]
    elif re.fullmatch(r"python[0-9.]*", name) and "-m" in command[1:]:
        index = list(command).index("-m", 1)
        module = command[index + 1] if index + 1 < len(command) else ""
        if module not in _SERVER_MODULES:
            return None
        backend, via, rest = _SERVER_MODULES[module], f"python -m {module}", list(command[index + 2 :])
    else:
        return None
    ns = _server_options(rest, via)
    model = ns.model or model
    try:
        default = VLLM_FRACTION if backend == "vllm" else None
        launch = BackendLaunch(backend, via, None, model, "the command" if model else "", fraction=default,
                               fraction_from=f"vLLM's default {default}" if default else "")  # fmt: skip
        if ns.tp is not None:
            launch = replace(launch, tp=_whole(ns.tp, "tensor parallel size"), tp_from=f"the command's {ns.tp}")
        if ns.dp is not None:
            launch = replace(launch, dp=_whole(ns.dp, "data parallel size"), dp_from=f"the command's {ns.dp}")
        if ns.fraction is not None:
            option = FRACTION_NAME[backend]
            launch = replace(launch, fraction=_fraction(ns.fraction, option), fraction_from=f"--{option} "
                             f"{ns.fraction}".replace("_", "-"))  # fmt: skip
    except BackendArgsError as exc:
        raise CommandError(f"{via}: {exc}") from None
    return launch


def _vlmevalkit_backend(command: Sequence[str], found: EvalCommand) -> str | None:
    """`vllm` for run.py's --use-vllm (argparse abbreviations as run.py takes them), `lmdeploy` for
    --use-lmdeploy; None when neither is given."""
    names = [PurePath(t).name for t in command]
    if "run.py" not in names:
        return None
    args = list(command[names.index("run.py") + 1 :])
    parser = argparse.ArgumentParser(prog="run.py", add_help=False)  # run.py keeps argparse's abbreviations
    parser.add_argument("--use-vllm", action="store_true")
    parser.add_argument("--use-lmdeploy", action="store_true")
    ns = _parse(parser, args, "VLMEvalKit run.py options")
    return "vllm" if ns.use_vllm else "lmdeploy" if ns.use_lmdeploy else None


def backend_launch(command: Sequence[str], env: Mapping[str, str]) -> BackendLaunch | None:
    """The inference backend the command starts, or None when it starts none.

    Raises CommandError when the command does not parse or gives a size the backend would refuse."""
    from diag.backends import BackendArgsError, from_lmms_eval, from_vlmevalkit

    command = list(command)
    if not command:
        return None
    server = server_launch(command)
    if server is not None:
        return server
    found = recognise(command, env)
    if found is None or found.kit is None:
        return None
    if found.kit == LMMS_EVAL:
        try:
            launch = from_lmms_eval(found.eval_model, found.model_args)
        except BackendArgsError as exc:
            raise CommandError(f"lmms-eval --model_args: {exc}") from None
    else:
        backend = _vlmevalkit_backend(command, found)
        if backend is None or found.eval_model is None:
            return None
        launch = from_vlmevalkit(found.eval_model, backend, vlmevalkit_checkpoint(found.eval_model) or found.eval_model)
    if launch is None:
        return None
    launcher = found.shape.split(" -m ")[0].split(" run.py")[0] if found.processes is not None else None
    if found.processes is not None:
        launch = replace(launch, processes=found.processes, processes_from=found.processes_from or "",
                         launcher=launcher)  # fmt: skip
    return replace(launch, notes=(*launch.notes, *found.notes))
