"""Can the eval command start at all? Its executable on PATH, and the module or script of the eval it runs.

Asked before the checks run, so a missing `lmms_eval` or a run.py outside the VLMEvalKit checkout is said at once,
not after the checks and not as the launcher's traceback. The module is looked up with importlib.util.find_spec
(found, not imported) by the interpreter that will run the eval: the command's own python, or the interpreter
named on the first line of a launcher script (accelerate, torchrun, lmms-eval), else this one. Another
interpreter than this one is asked in a child process; the lines say which interpreter was asked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from diag.launch.commands import LMMS_EVAL, VLMEVALKIT, EvalCommand

_PYTHON = re.compile(r"python[0-9.]*")
# The lookup a child interpreter runs: argv[1] the module, argv[2:] folders searched first (run.py's folder).
_FIND_SPEC = (
    "import importlib.util, sys; sys.path[:0] = sys.argv[2:]; spec = importlib.util.find_spec(sys.argv[1]); "
    "print(spec and (spec.origin or 'namespace package') or '')"
)
_INSTALL = {  # how to get the module the eval imports
    "lmms_eval": "pip install lmms-eval in that environment (or activate the environment lmms-eval is installed in)",
    "vlmeval": "run from the VLMEvalKit checkout and install it there: cd VLMEvalKit && pip install -e .",
    "vllm": "pip install vllm in the eval's environment (the engine the command starts)",
    "sglang": "pip install 'sglang[all]' in the eval's environment (the engine the command starts)",
    "lmdeploy": "pip install lmdeploy in the eval's environment (the engine the command starts)",
}
_ON_PATH = {  # how to get an executable the command starts with
    "accelerate": "pip install accelerate in the eval's environment, or activate that environment",
    "torchrun": "activate the environment torch is installed in (torchrun comes with torch)",
    "lmms-eval": "pip install lmms-eval, or activate the environment it is installed in",
    "vllm": "pip install vllm, or activate the environment it is installed in",
    "lmdeploy": "pip install lmdeploy, or activate the environment it is installed in",
}


@dataclass
class EvalFound:
    """What was found where (`lines`), and the first thing missing as one line with its fix (`missing`)."""

    lines: list[str] = field(default_factory=list)
    missing: str | None = None


def _shebang_interpreter(script: str, path: str | None) -> str | None:
    """The python a launcher script runs with: its `#!` line, or pip's `exec' "…/python"` form for long paths."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(1024).decode("utf-8", "replace").splitlines()[:3]
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None  # a binary or no shebang
    words = head[0][2:].split()
    if words and PurePath(words[0]).name == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
        return shutil.which(words[0], path=path) if words and _PYTHON.fullmatch(words[0]) else None
    if words and _PYTHON.fullmatch(PurePath(words[0]).name):
        return words[0]
    for line in head[1:]:  # #!/bin/sh then '''exec' "/very/long/path/python" "$0" "$@"
        match = re.search(r"exec'\s+\"?([^\"\s]+)\"?", line)
        if match and _PYTHON.fullmatch(PurePath(match[1]).name):
            return match[1]
    return None


def _find_module(module: str, interpreter: str, first: Sequence[str], env: Mapping[str, str], cwd: str) -> str | None:
    """Where `interpreter` would import `module` from; None when it would not find it. Raises OSError when the
    interpreter cannot be asked."""
    if os.path.abspath(interpreter) == os.path.abspath(sys.executable):
        saved = sys.path[:]
        sys.path[:0] = list(first)
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        finally:
            sys.path[:] = saved
        return (spec.origin or "namespace package") if spec else None
    try:
        done = subprocess.run([interpreter, "-c", _FIND_SPEC, module, *first], capture_output=True, text=True,
                              env=dict(env), cwd=cwd, timeout=60, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise OSError("it did not answer within 60 s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise OSError(last)
    return done.stdout.strip() or None


def find_eval(
    command: Sequence[str], found: EvalCommand | None, env: Mapping[str, str], cwd: str, backend: str | None = None
) -> EvalFound:
    """Whether the command's executable, for lmms-eval/VLMEvalKit the eval's module and script, and the inference
    engine it starts (`backend`: vllm, sglang, lmdeploy) can be found from `cwd` with the environment the command
    will start with."""
    result = _find_eval(command, found, env, cwd)
    if backend is not None and result.missing is None and command:
        _find_backend(command, backend, env, cwd, result)
    return result


def _find_backend(command: Sequence[str], backend: str, env: Mapping[str, str], cwd: str, result: EvalFound) -> None:
    """The engine's module, looked up by the interpreter that will import it (as for the eval's own module)."""
    path = env.get("PATH", os.defpath)
    executable = shutil.which(command[0], path=path) or command[0]
    name = PurePath(command[0]).name
    asked = executable if _PYTHON.fullmatch(name) else _shebang_interpreter(executable, path)
    interpreter = asked or sys.executable
    how = "" if asked else f" (diag's own: {executable} names no python on its first line)"
    try:
        origin = _find_module(backend, interpreter, [], env, cwd)
    except OSError as exc:
        result.lines.append(f"{backend}: not looked up: {interpreter} could not be asked ({exc})")
        return
    if origin is None:
        result.missing = f"{backend} is not importable by {interpreter}{how}: {_INSTALL[backend]}"
        return
    result.lines.append(f"{backend}: {origin} (found by {interpreter}{how})")


def _find_eval(command: Sequence[str], found: EvalCommand | None, env: Mapping[str, str], cwd: str) -> EvalFound:
    result = EvalFound()
    if not command:
        return result
    path = env.get("PATH", os.defpath)
    name = PurePath(command[0]).name
    executable = shutil.which(command[0], path=path)
    if executable is None:
        where = "not an executable file" if "/" in command[0] else "not on PATH"
        fix = _ON_PATH.get(name, "install it or activate the environment it is installed in")
        result.missing = f"{command[0]} is {where}: {fix}"
        return result
    result.lines.append(f"{command[0]}: {executable}")
    if found is None or found.kit is None:
        return result

    first: list[str] = []
    if found.kit == VLMEVALKIT and found.target and not found.target_is_module:
        script = Path(cwd, found.target)
        if not script.is_file():
            result.missing = (f"{found.target} is not in {cwd}: cd into the VLMEvalKit checkout (where run.py is) "
                              "and run the command there, or give run.py's path")  # fmt: skip
            return result
        result.lines.append(f"{found.target}: {script.resolve()}")
        first = [str(script.resolve().parent)]  # python puts the script's folder first on sys.path
    module = "lmms_eval" if found.kit == LMMS_EVAL else "vlmeval"

    asked = executable if _PYTHON.fullmatch(name) else _shebang_interpreter(executable, path)
    how = "" if asked else f" (diag's own: {executable} names no python on its first line)"
    interpreter = asked or sys.executable
    try:
        origin = _find_module(module, interpreter, first, env, cwd)
    except OSError as exc:
        result.lines.append(f"{module}: not looked up: {interpreter} could not be asked ({exc})")
        return result
    if origin is None:
        result.missing = f"{module} is not importable by {interpreter}{how}: {_INSTALL[module]}"
        return result
    result.lines.append(f"{module}: {origin} (found by {interpreter}{how})")
    return result
