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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diag.launch.commands import LMMS_EVAL, VLMEVALKIT, CommandError, EvalCommand, recognise, vlmevalkit_checkpoint

USAGE = "python -m diag run [diag options] [--dry-run] -- COMMAND …"
ENV_CHECKS = "test_env.py"
LAYOUT_CHECKS = "test_layout.py"
USAGE_ERROR = 2


@dataclass
class RunPlan:
    """The pytest run a command implies: targets, derived options, and what was (not) derived."""

    targets: list[str]
    options: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)  # "--model internvl2-76b (from --model InternVL2-76B)"
    not_derived: list[str] = field(default_factory=list)
    error: str | None = None  # bad input: the command is never started


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


def _preset(found: EvalCommand) -> tuple[str | None, str | None, str | None]:
    """(preset name, where from, problem) for the model the command names."""
    from diag.devicemap.model_args import ModelArgsError, pretrained_from_model_args
    from diag.twins import PRESETS, preset_for_checkpoint

    if found.kit == VLMEVALKIT and found.eval_model:
        checkpoint = vlmevalkit_checkpoint(found.eval_model) or found.eval_model
        spec = preset_for_checkpoint(checkpoint)
        if spec is None:
            return None, None, (f"VLMEvalKit model {found.eval_model!r} has no diag preset ({', '.join(PRESETS)}); "
                                "name it for diag: python -m diag run --model PRESET_OR_CONFIG_JSON -- …")  # fmt: skip
        return spec.name, f"--model {found.eval_model}", None
    if found.kit == LMMS_EVAL:
        try:
            pretrained = pretrained_from_model_args(found.model_args or "")
        except ModelArgsError:
            return None, None, None  # the MAP-009 check reports it with lmms-eval's own error
        if pretrained is None:
            return None, None, None
        spec = preset_for_checkpoint(pretrained)
        if spec is None:
            return None, None, (f"pretrained={pretrained} has no diag preset ({', '.join(PRESETS)}); name it for "
                                "diag: python -m diag run --model PRESET_OR_CONFIG_JSON -- …")  # fmt: skip
        return spec.name, f"pretrained={pretrained}", None
    return None, None, None


def plan_run(command: Sequence[str], diag_args: Sequence[str], env: Mapping[str, str], checks: Path) -> RunPlan:
    """What to run for this command; bad input keeps the checks that still apply and sets `error`."""
    env_only = [str(checks / ENV_CHECKS)]
    try:
        found = recognise(command, env)
    except CommandError as exc:
        return RunPlan(env_only, not_derived=["every check that needs the command"], error=str(exc))
    if found is None:
        unknown = f"{shlex.join(command[:3])} …: not a command diag recognises (launch layout, device map, memory, "
        return RunPlan(env_only, not_derived=[unknown + "same-device)"])
    targets = [str(checks)] if found.kit else [*env_only, str(checks / LAYOUT_CHECKS)]
    plan = RunPlan(targets, not_derived=list(found.notes))
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
        preset, source, problem = _preset(found)
        if problem:
            plan.targets = [*env_only, str(checks / LAYOUT_CHECKS)]
            plan.not_derived.append("the model: device-map, memory and same-device checks")
            plan.error = problem
        elif preset:
            _add(plan, diag_args, "--model", preset, f"from {source}")
        elif found.kit:
            plan.not_derived.append("the model: the command names none diag reads; the device-map checks plan "
                                    "diag's default models")  # fmt: skip
    _environment_notes(plan, env, found)
    return plan


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


def pytest_command(plan: RunPlan, diag_args: Sequence[str]) -> list[str]:
    """The pytest run: the plan's targets and options, then the user's diag options (which win)."""
    return [sys.executable, "-m", "pytest", *plan.targets, "-p", "diag.plugin", "-p", "no:cacheprovider",
            *plan.options, *diag_args]  # fmt: skip


def _say(line: str) -> None:
    print(f"diag: {line}", file=sys.stderr, flush=True)


def _command_env(diag_args: Sequence[str]) -> dict[str, str]:
    """The command's environment: this one, with diag's --gpus applied as the checks applied it."""
    env = dict(os.environ)
    gpus = _option_value(diag_args, "--gpus")
    if gpus is not None:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=gpus)
    return env


def main(argv: Sequence[str]) -> int:
    """`python -m diag run …`: returns the exit code, or does not return when the command starts."""
    args = list(argv)
    if "--" not in args:
        _say(f"error: put the eval command after `--`: {USAGE}")
        return USAGE_ERROR
    split = args.index("--")
    diag_args, command = args[:split], args[split + 1 :]
    dry_run = "--dry-run" in diag_args
    diag_args = [a for a in diag_args if a != "--dry-run"]
    checks = checks_dir()
    if checks is None:
        _say("error: the diag.checks package is missing: reinstall diag (pip install -e . from its clone)")
        return USAGE_ERROR
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
    pytest_argv = pytest_command(plan, diag_args)
    if dry_run:
        print(shlex.join(pytest_argv), flush=True)
        return USAGE_ERROR if plan.error else 0
    returncode = subprocess.run(pytest_argv, check=False).returncode
    if plan.error:
        _say("not starting the command: " + ("the checks that could run passed, but " if returncode == 0 else "")
             + "the command itself is the problem above")  # fmt: skip
        return USAGE_ERROR
    if returncode != 0:
        _say(f"checks failed (pytest exit code {returncode}): not starting {shlex.join(command)}")
        return returncode
    _say(f"every check passed: starting {shlex.join(command)}")
    try:
        os.execvpe(command[0], command, _command_env(diag_args))
    except OSError as exc:
        _say(f"error: cannot start {command[0]}: {exc.strerror or exc}")
        return 127
    return 0  # only reached when execvpe is replaced (tests)
