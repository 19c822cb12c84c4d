"""The libraries' own warnings inside diag's planning and twin runs, kept out of the user's terminal.

diag calls accelerate and transformers on full-width meta models and on twins placed on simulated GPUs; what
those libraries warn about there (a simulated device "not available", a device_map key that names a parameter
rather than a module) concerns diag's call, not the user's eval, and pytest would show it in its warnings
summary as if it came from the user's code. diag captures these warnings around its own calls; where one
matters, a check says so in diag's words with its fix code (MAP-005 for map keys that match no module), and
the rest are dropped or, inside a check, kept in that check's report entry (`data.library_warnings`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

LIBRARIES = ("accelerate", "transformers", "torch", "huggingface_hub", "safetensors")


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside, recorded (each time, whatever the filters) instead of shown or raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@cache
def _library_folders() -> tuple[str, ...]:
    folders: list[str] = []
    for name in LIBRARIES:
        try:
            spec = importlib.util.find_spec(name)  # a top-level package: found, not imported
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            folders.append(str(Path(folder).resolve()))
    return tuple(folders)


def from_library(warning: warnings.WarningMessage) -> bool:
    """Whether the warning was raised from inside one of the LIBRARIES' own files."""
    try:
        path = Path(warning.filename).resolve()
    except (OSError, RuntimeError):
        return False
    return any(path.is_relative_to(folder) for folder in _library_folders())


def describe(warning: warnings.WarningMessage) -> str:
    """`UserWarning: <message> (accelerate/utils/modeling.py:1627)`, the warning in one line."""
    parts = Path(warning.filename).parts
    where = next(("/".join(parts[i:]) for i in range(len(parts)) if parts[i] in LIBRARIES), Path(warning.filename).name)
    message = " ".join(str(warning.message).split())
    return f"{warning.category.__name__}: {message} ({where}:{warning.lineno})"


def reemit(warning: warnings.WarningMessage) -> None:
    """Hand a captured warning on, as if it had not been captured (the filters in force now decide)."""
    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno, source=warning.source)
