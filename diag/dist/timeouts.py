"""Process-group timeouts set by the eval kits: the time a job waits for a rank that died before it fails.

VLMEvalKit's run.py passes `timedelta(seconds=int(os.environ.get('DIST_TIMEOUT', 3600)))` to init_process_group
(VLMEvalKit #1131). lmms-eval hard-codes `InitProcessGroupKwargs(timeout=...)` for accelerate:
`timedelta(seconds=60000)` in `lmms_eval/__main__.py` and `timedelta(weeks=52)` in model classes such as
`lmms_eval/models/llava.py`. The installed lmms-eval is read as text, never imported.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LONG_WAIT_S = 3600.0  # above VLMEvalKit's default hour, a dead rank holds the GPUs for longer than a coffee break
DIST_TIMEOUT = "DIST_TIMEOUT"
_KWARGS = re.compile(r"InitProcessGroupKwargs\(\s*timeout\s*=\s*(?:datetime\.)?timedelta\(([^()]*)\)")


@dataclass(frozen=True)
class TimeoutSetting:
    """One place that sets a process-group timeout: where, how long, and the text that sets it."""

    where: str  # "DIST_TIMEOUT" or "lmms_eval/models/llava.py:62"
    seconds: float
    text: str


def human(seconds: float) -> str:
    """3600 -> '1 h', 60000 -> '16.7 h', 52 weeks -> '52 weeks'."""
    if seconds >= 7 * 86400:
        return f"{seconds / (7 * 86400):g} weeks"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds:g} s"


def dist_timeout(env: Mapping[str, str]) -> TimeoutSetting | None:
    """VLMEvalKit's DIST_TIMEOUT if set; ValueError where VLMEvalKit's int() would raise on it."""
    raw = env.get(DIST_TIMEOUT)
    if raw is None:
        return None
    try:
        seconds = int(raw)  # exactly what run.py does, so ' 60 ' passes and '1.5' does not
    except ValueError:
        raise ValueError(f"{DIST_TIMEOUT}={raw!r} is not a whole number of seconds") from None
    return TimeoutSetting(DIST_TIMEOUT, float(seconds), f"{DIST_TIMEOUT}={raw}")


def _timedelta_seconds(arguments: str) -> float | None:
    try:
        call = ast.parse(f"f({arguments})", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call) or call.args:
        return None
    try:
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        return dt.timedelta(**kwargs).total_seconds()
    except (ValueError, TypeError, OverflowError):
        return None


def package_dir(name: str) -> Path | None:
    """Where an installed top-level package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def lmms_eval_timeouts(root: Path) -> list[TimeoutSetting]:
    """Every `InitProcessGroupKwargs(timeout=timedelta(...))` in lmms-eval's entry point and model classes."""
    files = [root / "__main__.py", root / "evaluator.py", *sorted((root / "models").rglob("*.py"))]
    found: list[TimeoutSetting] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in _KWARGS.finditer(text):
            seconds = _timedelta_seconds(match[1])
            if seconds is not None:
                line = text.count("\n", 0, match.start()) + 1
                where = f"{root.name}/{path.relative_to(root).as_posix()}:{line}"
                found.append(TimeoutSetting(where, seconds, match[0] + ")"))
    return found
