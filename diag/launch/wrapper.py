"""Run the suite with the options an eval command implies, and start the command only if every check passed.

The pytest run inherits this environment, so CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER and AUTO_SPLIT are checked
as the eval will see them. `--gpus` given to diag also applies to the command: it is started with
CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES set to those GPUs, the ones the checks judged.
The command itself (its argv) is started unchanged, with os.execvpe, so it replaces this process.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from diag.launch.commands import LMMS_EVAL, VLMEVALKIT, CommandError, EvalCommand, recognise, vlmevalkit_checkpoint
from diag.launch.findeval import find_eval
from diag.reader import load_json
from diag.redact import redact_text, redacted_shell_command, remember, secrets_of
from diag.summary import NEXT_STEP

if TYPE_CHECKING:
    import pytest

    from diag.backends import BackendLaunch

USAGE = "python -m diag run [diag options] [--dry-run | --check-only] [--start-anyway] -- COMMAND"
ENV_CHECKS = "test_env.py"
LAYOUT_CHECKS = "test_layout.py"
BACKEND_CHECKS = "test_backends.py"
# Exit codes of the wrapper besides pytest's own (1 a check failed, 3 internal error, 4 pytest usage error).
USAGE_ERROR = 2  # bad input: no `--`, an empty command, options that do not parse, a model without a preset
NOT_THIS_NODE = 6  # the node checked was simulated or replayed, not this machine's, and --start-anyway not given
EVAL_NOT_FOUND = 127  # the eval's executable, module (lmms_eval, vlmeval) or script (run.py) is not found
EVAL_ENV_EXTRA = ("AUTO_SPLIT", "GPUS_PER_PROCESS", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "PYTORCH_CUDA_ALLOC_CONF")
WRAPPER_PASSES = ("--eval-command",)  # diag options the wrapper fills in itself: not in its help
WRAPPER_HELP = {  # diag options whose meaning under the wrapper differs from pytest's
    "--diag-report": "where the JSON report goes, relative to the current folder; default reports/diag-report.json "
    "in the current folder. The wrapper reads it back to list the failures and warnings",
}
HELP = """usage: {usage}

Runs the checks the eval COMMAND implies (the launcher, the process count, lmms-eval's --model and
--model_args, VLMEvalKit's --model), prints their failures and warnings, and starts COMMAND unchanged only if
every check passed, the eval's executable, module and script are found, and the node checked is this
machine's. COMMAND starts with the GPUs the checks judged: diag's --gpus becomes CUDA_VISIBLE_DEVICES (with
CUDA_DEVICE_ORDER=PCI_BUS_ID); without --gpus the environment's CUDA_VISIBLE_DEVICES is kept.

options (before `--`; diag options win over what diag derives from COMMAND):
{options}
Other pytest options (-q, -v, -x, -n 2) are passed on to pytest.

exit codes:
  1 (or pytest's)  a check failed: COMMAND is not started
  {usage_error}                bad input (no `--`, an empty COMMAND, options that do not parse, a model diag has
                   no preset for): the checks that can still run do; COMMAND is not started
  {not_this_node}                the node checked was simulated (--simulate) or replayed (--topology): COMMAND is not
                   started without --start-anyway
  {not_found}              the eval's executable, lmms_eval / vlmeval module or run.py is not found, or it cannot start
  (none)           COMMAND started: it replaces this process, so its exit code is the eval's

examples:
  python -m diag run -- accelerate launch --num_processes 2 -m lmms_eval --model llava_hf \\
      --model_args pretrained=llava-hf/llava-1.5-7b-hf --tasks mme
  python -m diag run --gpus 4,5,6,7 -- python -m lmms_eval --model llava_hf \\
      --model_args pretrained=llava-hf/llava-v1.6-34b-hf,device_map=auto --tasks mme --batch_size 1
  CUDA_VISIBLE_DEVICES=4,5,6,7 python -m diag run -- torchrun --nproc-per-node 2 run.py --data MME \\
      --model InternVL2-8B                       (VLMEvalKit: from its checkout)
  python -m diag run --simulate 8xA100-80GB --dry-run -- torchrun --nproc-per-node 2 run.py --data MME \\
      --model InternVL2-76B                      (prints the pytest command; runs nothing)
  python -m diag run --simulate 8xA100-80GB --start-anyway -- …   (checks a simulated node, starts COMMAND here)
"""


@dataclass
class RunPlan:
    """The pytest run a command implies: targets, derived options, and what was (not) derived."""

    targets: list[str]
    options: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)  # "--model internvl2-76b (from --model InternVL2-76B)"
    not_derived: list[str] = field(default_factory=list)
    error: str | None = None  # bad input: the command is never started
    found: EvalCommand | None = None  # how diag read the command (None: not recognised, or it does not parse)
    backend: str | None = None  # the inference engine the command starts (vllm, sglang, lmdeploy), if any


def checks_dir() -> Path | None:
    """The folder of the `diag.checks` package: checks/ of a clone (editable install), diag/checks/ of a wheel."""
    try:
        spec = importlib.util.find_spec("diag.checks")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:  # diag imported from a clone that was never installed
        folder = Path(__file__).resolve().parents[2] / "checks"
    else:
        folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / ENV_CHECKS).is_file() else None


def _given(diag_args: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in diag_args)


def _option_value(diag_args: Sequence[str], option: str) -> str | None:
    for index, arg in enumerate(diag_args):
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
        if arg == option and index + 1 < len(diag_args):
            return diag_args[index + 1]
    return None


def _add(plan: RunPlan, diag_args: Sequence[str], option: str, value: str, why: str) -> None:
    """Derive an option unless the user gave it to diag before `--` (theirs wins)."""
    if _given(diag_args, option):
        plan.derived.append(f"{option} as given to diag (the command says {value}, {why})")
        return
    plan.options += [option, value]
    plan.derived.append(f"{option} {value} ({why})")


def _model_of(found: EvalCommand) -> tuple[str | None, str | None, str | None]:
    """(--model value for diag, where it came from, why there is none) for the model the command names.

    The checkpoint's own config wins (a local folder, or the hub id in the local Hugging Face cache: the value is
    then the id or path itself, which `--model` resolves the same way); diag's preset stands in otherwise."""
    from diag.devicemap.model_args import ModelArgsError, pretrained_from_model_args
    from diag.twins import UnknownModel, model_for_checkpoint
    from diag.twins.hubcache import hub_cache_dir

    if found.kit == VLMEVALKIT and found.eval_model:
        checkpoint, source = vlmevalkit_checkpoint(found.eval_model) or found.eval_model, f"--model {found.eval_model}"
    elif found.kit == LMMS_EVAL:
        try:
            pretrained = pretrained_from_model_args(found.model_args or "")
        except ModelArgsError:
            return None, None, None  # the MAP-009 check reports it with lmms-eval's own error
        if pretrained is None:
            return None, None, None
        checkpoint, source = pretrained, f"pretrained={pretrained}"
    else:
        return None, None, None
    try:
        spec = model_for_checkpoint(checkpoint)
    except UnknownModel as exc:
        return None, None, str(exc).replace("--model ", "", 1)
    if spec is None:
        return None, None, (f"{source}: its config is neither in the local Hugging Face cache ({hub_cache_dir()}) "
                            "nor one of diag's presets")  # fmt: skip
    return (spec.name if spec.source == "preset" else checkpoint), source, None


def plan_run(command: Sequence[str], diag_args: Sequence[str], env: Mapping[str, str], checks: Path) -> RunPlan:
    """What to run for this command; bad input keeps the checks that still apply and sets `error`."""
    env_only = [str(checks / ENV_CHECKS)]
    try:
        found = recognise(command, env)
    except CommandError as exc:
        return RunPlan(env_only, not_derived=["every check that needs the command"], error=str(exc))
    if found is None:
        server = _server_plan(command, diag_args, env, checks)
        if server is not None:
            return server
        unknown = f"{shlex.join(command[:3])} …: not a command diag recognises (launch layout, device map, memory, "
        return RunPlan(env_only, not_derived=[unknown + "same-device)"])
    targets = [str(checks)] if found.kit else [*env_only, str(checks / LAYOUT_CHECKS)]
    plan = RunPlan(targets, not_derived=list(found.notes), found=found)
    plan.derived.append(f"recognised: {found.shape}")
    if found.kit:
        _add(plan, diag_args, "--eval-kit", found.kit, "from the command")
    if found.processes is not None:
        _add(plan, diag_args, "--processes", str(found.processes), f"from {found.processes_from}")
    if found.kit == LMMS_EVAL and found.eval_model:
        _add(plan, diag_args, "--eval-model", found.eval_model, "lmms-eval --model")
    if found.model_args is not None:
        _add(plan, diag_args, "--model-args", found.model_args, "lmms-eval --model_args")
    for other in found.other_models:
        plan.not_derived.append(f"VLMEvalKit --model {other}: only the first model is checked; run diag for it too")
    if not _given(diag_args, "--model"):
        model, source, problem = _model_of(found)
        if problem:  # never a reason to refuse the eval: the checks that need no model still run
            if found.model_args is None:  # nothing names the map either (VLMEvalKit): only env and layout apply
                plan.targets = [*env_only, str(checks / LAYOUT_CHECKS)]
                skipped = "the device-map, memory and same-device checks are skipped"
            else:  # lmms-eval: its --model_args map is still checked; the model checks skip with MODEL-003
                skipped = "the memory and same-device checks are skipped"
            plan.not_derived.append(f"the model ({problem}): {skipped}; give diag the checkpoint's config with "
                                    "--model PATH before `--` (or its snapshot in the Hugging Face cache; "
                                    "--trust-remote-code for a checkpoint with its own code)")  # fmt: skip
        elif model:
            _add(plan, diag_args, "--model", model, f"from {source}")
        elif found.kit:
            plan.not_derived.append("the model: the command names none diag reads; the device-map checks plan "
                                    "diag's default models")  # fmt: skip
    _backend_plan(plan, command, diag_args, env, checks)
    consent = remote_code_reason(found, _option_value(diag_args, "--model") or _option_value(plan.options, "--model"))
    if consent and not _given(diag_args, "--trust-remote-code"):
        plan.options.append("--trust-remote-code")
        plan.derived.append(f"--trust-remote-code (the eval itself runs the checkpoint's own code: {consent})")
    _environment_notes(plan, env, found)
    return plan


# -- inference backends (vLLM, SGLang, LMDeploy) -------------------------------------------------------------------
_ENGINE_LOADS = ("the device-map, memory and same-device checks: the engine loads the model itself (tensor "
                 "parallel), not through from_pretrained's device_map")  # fmt: skip


def _backend_line(launch: BackendLaunch) -> str:
    """`backend: vLLM via lmms-eval --model vllm, tensor_parallel_size=8, …` for the wrapper's derived lines."""
    names = {"vllm": "vLLM", "sglang": "SGLang", "lmdeploy": "LMDeploy"}
    parts = [f"{names[launch.backend]} via {launch.via}", f"model {launch.model} ({launch.model_from})" if launch.model
             else "model not named", f"tp {launch.tp} ({launch.tp_from})" if launch.tp is not None
             else f"tp from the GPU count ({launch.tp_from})", f"dp {launch.dp} ({launch.dp_from})"]  # fmt: skip
    if launch.fraction is not None:
        parts.append(f"{launch.fraction_name} {launch.fraction} ({launch.fraction_from})")
    if launch.processes > 1:
        parts.append(f"{launch.processes} processes ({launch.processes_from})")
    return "backend: " + ", ".join(parts)


def _server_plan(
    command: Sequence[str], diag_args: Sequence[str], env: Mapping[str, str], checks: Path
) -> RunPlan | None:
    """A server command (`vllm serve`, `python -m sglang.launch_server`, `lmdeploy serve api_server`): the
    environment, layout and backend checks; None for any other command."""
    from diag.launch.commands import server_launch

    try:
        launch = server_launch(command)
    except CommandError as exc:
        return RunPlan([str(checks / ENV_CHECKS)], not_derived=["every check that needs the command"], error=str(exc))
    if launch is None:
        return None
    plan = RunPlan([str(checks / ENV_CHECKS), str(checks / LAYOUT_CHECKS), str(checks / BACKEND_CHECKS)])
    plan.backend = launch.backend
    plan.derived += [f"recognised: {launch.via} (an inference server)", _backend_line(launch)]
    _add(plan, diag_args, "--backend", launch.backend, f"from {launch.via}")
    plan.not_derived.append(_ENGINE_LOADS)
    return plan


def _backend_plan(
    plan: RunPlan, command: Sequence[str], diag_args: Sequence[str], env: Mapping[str, str], checks: Path
) -> None:
    """An lmms-eval / VLMEvalKit command that starts an engine: the backend checks instead of the device-map ones."""
    from diag.launch.commands import backend_launch

    try:
        launch = backend_launch(command, env)
    except CommandError as exc:
        plan.not_derived.append(f"the backend's settings ({exc}): the backend checks say why")
        launch = None
    if launch is None:
        return
    plan.targets = [str(checks / ENV_CHECKS), str(checks / LAYOUT_CHECKS), str(checks / BACKEND_CHECKS)]
    plan.backend = launch.backend
    plan.derived.append(_backend_line(launch))
    _add(plan, diag_args, "--backend", launch.backend, f"from {launch.via}")
    plan.not_derived = [line for line in plan.not_derived if not line.startswith("the model")]
    plan.not_derived.append(_ENGINE_LOADS)


# lmms-eval classes that load their checkpoint with trust_remote_code=True whatever --model_args says
# (lmms_eval/models/simple/internvl2.py: `AutoModel.from_pretrained(..., trust_remote_code=True, ...)`).
LMMS_EVAL_REMOTE_CODE_CLASSES = frozenset({"internvl2"})


def remote_code_reason(found: EvalCommand, model: str | None) -> str | None:
    """Why the eval command itself executes the checkpoint's own code, or None: `trust_remote_code=True` in
    lmms-eval's --model_args, an lmms-eval class that always passes it, or a checkpoint whose config.json has an
    auto_map and a model_type the installed transformers does not know (from_pretrained loads such a checkpoint
    only with trust_remote_code=True, so an eval that loads it at all runs that code)."""
    from diag.devicemap.model_args import ModelArgsError, parse_model_args

    if found.kit == LMMS_EVAL and found.model_args:
        try:
            args = parse_model_args(found.model_args)
        except ModelArgsError:
            args = {}
        if str(args.get("trust_remote_code", "")).strip().lower() == "true":
            return "lmms-eval --model_args trust_remote_code=True"
    if found.kit == LMMS_EVAL and found.eval_model in LMMS_EVAL_REMOTE_CODE_CLASSES:
        return f"lmms-eval's {found.eval_model} class loads with trust_remote_code=True"
    if model is None:
        return None
    from diag.twins import UnknownModel, model_for_checkpoint
    from diag.twins.remote import model_ref, model_type_known

    try:
        spec = model_for_checkpoint(model)
    except UnknownModel:
        return None
    if spec is None or spec.code_dir is None or model_ref(spec.config) is None:
        return None
    model_type = str(spec.config.get("model_type", ""))
    if not model_type_known(model_type):
        kit = "VLMEvalKit" if found.kit == VLMEVALKIT else "the eval"
        return (
            f"{model} ships its own code (auto_map) for model_type {model_type!r}, which the installed "
            f"transformers does not have, so {kit} loads it with trust_remote_code=True"
        )
    return None


def _environment_notes(plan: RunPlan, env: Mapping[str, str], found: EvalCommand) -> None:
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST (unset)")
        plan.derived.append(f"GPUs: CUDA_VISIBLE_DEVICES={cvd}, CUDA_DEVICE_ORDER={order} from the environment")
    if env.get("AUTO_SPLIT"):
        plan.derived.append(f"AUTO_SPLIT={env['AUTO_SPLIT']} from the environment")
    if found.kit == VLMEVALKIT and found.processes and found.processes > 1 and cvd:
        from diag.devicemap.autosplit import (
            VlmevalkitAssertion,
            parse_cuda_visible_devices_like_vlmevalkit,
            process_slices,
        )

        try:
            gpus = parse_cuda_visible_devices_like_vlmevalkit(cvd)
            slices = process_slices(len(gpus), found.processes)
        except (ValueError, VlmevalkitAssertion):
            return  # the layout checks say why
        shown = "; ".join(f"rank {r} GPUs {','.join(str(gpus[p]) for p in s)}" for r, s in enumerate(slices))
        plan.derived.append(f"VLMEvalKit run.py slices: {shown}")


def pytest_command(plan: RunPlan, diag_args: Sequence[str], command: Sequence[str] = ()) -> list[str]:
    """The pytest run: the plan's targets and options, the eval command, then the user's diag options (which win)."""
    eval_command = ["--eval-command", shlex.join(command)] if command else []
    return [sys.executable, "-m", "pytest", *plan.targets, "-p", "diag.plugin", "-p", "no:cacheprovider",
            *plan.options, *eval_command, *diag_args]  # fmt: skip


def _say(line: str) -> None:
    """Every line the wrapper prints goes through the one redaction (the command's secrets never reach stderr)."""
    print(redact_text(f"diag: {line}"), file=sys.stderr, flush=True)


def _command_env(diag_args: Sequence[str]) -> dict[str, str]:
    """The command's environment: this one, with diag's --gpus applied as the checks applied it."""
    env = dict(os.environ)
    gpus = _option_value(diag_args, "--gpus")
    if gpus is not None:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=gpus)
    return env


def eval_env_line(env: Mapping[str, str]) -> str:
    """The GPU variables the eval starts with, as it will see them (unset ones say what that means)."""
    shown = [f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env
             else "CUDA_VISIBLE_DEVICES unset (every GPU)",
             f"CUDA_DEVICE_ORDER={env['CUDA_DEVICE_ORDER']}" if "CUDA_DEVICE_ORDER" in env
             else "CUDA_DEVICE_ORDER unset (FASTEST_FIRST)"]  # fmt: skip
    shown += [f"{name}={env[name]}" for name in EVAL_ENV_EXTRA if name in env]
    return "the eval's environment: " + ", ".join(shown)


def _take(diag_args: list[str], option: str) -> tuple[str | None, list[str]]:
    """The value of `option` (last one wins, as in pytest) and the arguments without it; ValueError when the
    option ends the arguments without its value."""
    value, rest, index = None, [], 0
    while index < len(diag_args):
        arg = diag_args[index]
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        elif arg == option:
            if index + 1 >= len(diag_args):
                raise ValueError(f"{option} needs a value")
            value = diag_args[index + 1]
            index += 1
        else:
            rest.append(arg)
        index += 1
    return value, rest


def report_target(given: str | None, cwd: Path, env: Mapping[str, str]) -> Path:
    """Where the wrapper's pytest run writes its report, as an absolute path the wrapper reads back afterwards:
    --diag-report PATH (relative to the current folder, {rank}/{host} filled in), else reports/diag-report.json
    in the current folder. Raises ReportPathError for a template with other placeholders."""
    from diag.dist.ranks import hostname, launched_rank
    from diag.report import DEFAULT_PATH, report_path

    return report_path(given if given is not None else DEFAULT_PATH, cwd, launched_rank(env), hostname()).absolute()


def _read_report(path: Path, since: float) -> dict[str, Any] | None:
    """The report this run wrote; None when there is none (pytest stopped before writing it) or it is older."""
    try:
        if path.stat().st_mtime < since:
            return None
        data = load_json(path)  # a regular file only (the reader): never blocks on a FIFO
    except (OSError, ValueError):  # InputError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def report_lines(report: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(failures, warnings) of a report, one line each, in the terminal summary's order and words
    (diag.summary: root cause first), a line repeated by several checks given once."""
    from diag.summary import finding_line, findings

    failures: list[str] = []
    warnings: list[str] = []
    checks = [c for c in report.get("checks") or [] if isinstance(c, dict)]
    for finding in findings(checks):
        lines = failures if finding.kind == "failure" else warnings
        line = finding_line(finding)
        if line not in lines:
            lines.append(line)
    return failures, warnings


def _checked_elsewhere(report: Mapping[str, Any] | None, diag_args: Sequence[str]) -> str | None:
    """How the node checked was not this machine's (simulated, replayed), or None when it was."""
    source = (report or {}).get("topology", {}).get("source") if report else None
    if source == "simulated" or (source is None and _given(diag_args, "--simulate")):
        return "simulated (--simulate)"
    if source == "file" or (source is None and _given(diag_args, "--topology")):
        return "replayed from a file (--topology)"
    return None


def _help() -> str:
    from diag.options import add_options

    collector = _OptionCollector()
    add_options(cast("pytest.Parser", collector))
    rows = [(f"{names[0]} {metavar}" if metavar else names[0], WRAPPER_HELP.get(names[0], text))
            for names, metavar, text in collector.options if names[0] not in WRAPPER_PASSES]  # fmt: skip
    rows = [("--dry-run", "print the pytest command it would run, and run nothing"),
            ("--check-only", "run the checks and list what they found, but never start COMMAND (CI); the exit code "
             "is the checks' (0 when they pass)"),
            ("--start-anyway", "start COMMAND even though the node checked was simulated or replayed"),
            ("-h, --help", "this help"), *rows]  # fmt: skip
    width = max(len(name) for name, _ in rows) + 2
    options = []
    for name, text in rows:
        wrapped = textwrap.wrap(text, 118 - width) or [""]
        options += [f"  {name.ljust(width)}{wrapped[0]}", *(" " * (width + 2) + line for line in wrapped[1:])]
    return HELP.format(usage=USAGE, options="\n".join(options), usage_error=USAGE_ERROR,
                       not_this_node=NOT_THIS_NODE, not_found=EVAL_NOT_FOUND)  # fmt: skip


class _OptionCollector:
    """Stands in for pytest's parser to list diag's own options in the wrapper's help."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], str | None, str]] = []

    def getgroup(self, *args: object, **kwargs: object) -> _OptionCollector:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        self.options.append((names, kwargs.get("metavar"), str(kwargs.get("help", ""))))


def main(argv: Sequence[str]) -> int:
    """`python -m diag run …`: returns the exit code, or does not return when the command starts."""
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    if any(a in ("-h", "--help") for a in args[:split]):  # after `--` they belong to the command
        print(_help(), flush=True)
        return 0
    if "--" not in args:
        _say(f"error: put the eval command after `--`: {USAGE} (python -m diag run --help)")
        return USAGE_ERROR
    diag_args, command = args[:split], args[split + 1 :]
    if command and not command[0].strip():  # `-- ''`: no program to check or start
        _say(f"error: the command after `--` starts with an empty word ({shlex.join(command[:1])}): {USAGE}")
        return USAGE_ERROR
    remember(secrets_of(diag_args, os.environ, command))
    dry_run, start_anyway = "--dry-run" in diag_args, "--start-anyway" in diag_args
    check_only = "--check-only" in diag_args
    diag_args = [a for a in diag_args if a not in ("--dry-run", "--start-anyway", "--check-only")]
    checks = checks_dir()
    if checks is None:
        _say("error: the diag.checks package is missing: reinstall diag (pip install -e . from its clone)")
        return USAGE_ERROR
    try:
        given_report, diag_args = _take(diag_args, "--diag-report")
        report_file = report_target(given_report, Path.cwd(), os.environ)
    except ValueError as exc:  # no value, or a ReportPathError
        _say(f"error: {exc}")
        return USAGE_ERROR
    diag_args += ["--diag-report", str(report_file)]
    if command:
        plan = plan_run(command, diag_args, os.environ, checks)
    else:
        plan = RunPlan([str(checks / ENV_CHECKS)], not_derived=["every check that needs the command"],
                       error=f"no COMMAND after `--`: nothing to check or start ({USAGE})")  # fmt: skip
    for line in plan.derived:
        _say(line)
    for line in plan.not_derived:
        _say(f"not derived: {line}")
    if plan.error:
        _say(f"error: {plan.error}")
    env = _command_env(diag_args)
    found = find_eval(command, plan.found, env, os.getcwd(), backend=plan.backend)
    for line in found.lines:
        _say(f"found {line}")
    if found.missing:
        _say(f"error: {found.missing}")
    pytest_argv = pytest_command(plan, diag_args, command)
    if dry_run:
        if command:
            _say(eval_env_line(env))
        print(redacted_shell_command(pytest_argv), flush=True)  # the secrets shown as <redacted>
        return USAGE_ERROR if plan.error else 0
    started = time.time() - 1  # the report's mtime has a coarse clock on some file systems
    returncode = subprocess.run(pytest_argv, check=False).returncode
    report = _read_report(report_file, started)
    failures, warnings = report_lines(report) if report else ([], [])
    if report is None:
        _say(f"no report at {report_file}: the failures and warnings are in pytest's output above")
    if returncode != 0:
        _say(f"checks failed (pytest exit code {returncode}): {_count(failures, 'failure')}, "
             f"{_count(warnings, 'warning')}" + (":" if failures or warnings else ""))  # fmt: skip
    else:
        _say(f"checks passed with {_count(warnings, 'warning')}:" if warnings else "every check passed")
    for index, line in enumerate([*failures, *warnings]):
        _say(f"  {NEXT_STEP if index == 0 else ''}{line}")
    if plan.error:
        _say("not starting the command: " + ("the checks that could run passed, but " if returncode == 0 else "")
             + "the command itself is the problem above")  # fmt: skip
        return USAGE_ERROR
    if returncode != 0:
        also = f" (and {found.missing})" if found.missing else ""
        _say(f"not starting {redacted_shell_command(command)}: fix the failures above{also}")
        return returncode
    if found.missing:
        _say(f"not starting {redacted_shell_command(command)}: {found.missing}")
        return EVAL_NOT_FOUND
    _say(eval_env_line(env))
    if check_only:
        _say(f"not starting {redacted_shell_command(command)}: --check-only")
        return 0
    elsewhere = _checked_elsewhere(report, diag_args)
    if elsewhere and not start_anyway:
        _say(f"not starting {redacted_shell_command(command)}: the node checked was {elsewhere}, not this "
             f"machine's (exit code {NOT_THIS_NODE}); check this machine by leaving out --simulate/--topology, or "
             "give --start-anyway before `--` to start it all the same")  # fmt: skip
        return NOT_THIS_NODE
    if elsewhere:
        _say(f"the node checked was {elsewhere}, not this machine's: starting anyway (--start-anyway): "
             f"{redacted_shell_command(command)}")  # fmt: skip
    else:
        _say(f"starting {redacted_shell_command(command)}")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        _say(f"error: cannot start {command[0]}: {exc.strerror or exc}")
        return EVAL_NOT_FOUND
    return 0  # only reached when execvpe is replaced (tests)


def _count(items: Sequence[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
