"""Where a device map comes from, and the `--device-map` option's parser.

A source holds the value exactly as the eval would hand it to `from_pretrained(device_map=...)`: an empty string
stays an empty string, `"1"` in a JSON map stays a string and `1` stays an int. Deciding whether that value works
is the validator's job, which asks transformers itself, so this parser rejects only what cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

Strategy = Literal["auto", "balanced", "balanced_low_0", "sequential"]
Kind = Literal["strategy", "device", "int", "dict", "empty", "none", "other"]
DeviceMapValue: TypeAlias = "str | int | float | dict[str, str | int] | None"

STRATEGIES: tuple[Strategy, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
ORIGIN_OPTION = "--device-map"
ORIGIN_MODEL_ARGS = "--model-args"
ORIGIN_AUTO_SPLIT = "AUTO_SPLIT"
ORIGIN_DEFAULT = "default"

EXPECTED = "expected auto, balanced, balanced_low_0, sequential, cpu, cuda, cuda:N, N, a JSON object or @file.json"
_INT = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class DeviceMapSource:
    """One device map and where it came from.

    `value` is what `from_pretrained(device_map=...)` receives. `origin` is "--device-map", "--model-args",
    "AUTO_SPLIT" or "default"; `text` is how the user wrote it, for messages. `model_class` is the lmms-eval model
    class when known. `note` says how the eval turned what the user wrote into `value`, when it did.
    A float or bool can only come from `--model-args` (lmms-eval converts `device_map=1.5`, `device_map=true`).
    """

    value: DeviceMapValue
    origin: str
    text: str
    model_class: str | None = None
    note: str | None = None

    @property
    def kind(self) -> Kind:
        """What sort of value this is: a planner strategy, one device, an int ordinal, a dict, "" or None."""
        value = self.value
        if value is None:
            return "none"
        if isinstance(value, dict):
            return "dict"
        if isinstance(value, bool | float):
            return "other"
        if isinstance(value, int):
            return "int"
        if value == "":
            return "empty"
        return "strategy" if value in STRATEGIES else "device"


class DeviceMapSyntaxError(argparse.ArgumentTypeError, ValueError):
    """A `--device-map` value that cannot be read; one line naming the value and what is expected.

    It is an `argparse.ArgumentTypeError` too, so pytest shows the message as a usage error.
    """


def parse_device_map_option(value: str) -> DeviceMapSource:
    """Read a `--device-map` value: a strategy, a device, an int, a JSON object, `@file.json`, or ""."""
    stripped = value.strip()
    if stripped.startswith("@"):
        return DeviceMapSource(_read_map_file(value, stripped[1:]), ORIGIN_OPTION, value)
    if stripped.startswith(("{", "[")):
        return DeviceMapSource(_map_from_json(value, stripped, where=""), ORIGIN_OPTION, value)
    if _INT.fullmatch(value):
        # Negative ints stay ints: transformers' own check names them ("can't pass device_map as a negative int").
        return DeviceMapSource(int(value), ORIGIN_OPTION, value)
    # "", "gpu", "cuda:x" and friends are kept: the validator runs them through transformers' own check.
    return DeviceMapSource(value, ORIGIN_OPTION, value)


def _syntax_error(value: str, problem: str) -> DeviceMapSyntaxError:
    return DeviceMapSyntaxError(f"--device-map {value!r}: {problem}; {EXPECTED}")


def _read_map_file(value: str, path_text: str) -> dict[str, str | int]:
    if not path_text:
        raise _syntax_error(value, "no file after '@'")
    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _syntax_error(value, f"file {path_text} not found") from None
    except UnicodeDecodeError as exc:
        raise _syntax_error(value, f"file {path_text} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise _syntax_error(value, f"cannot read file {path_text} ({exc.strerror or exc})") from None
    return _map_from_json(value, text, where=f"file {path_text}: ")


def _map_from_json(value: str, text: str, *, where: str) -> dict[str, str | int]:
    """The dict json.loads gives, kept as written; only objects of ints and strings pass."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(
            value, f"{where}not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(loaded, dict):
        raise _syntax_error(value, f"{where}a JSON {type(loaded).__name__}, not an object of module names")
    bad = [key for key, entry in loaded.items() if isinstance(entry, bool) or not isinstance(entry, int | str)]
    if bad:
        shown = ", ".join(f"{key!r}: {json.dumps(loaded[key])}" for key in bad)
        raise _syntax_error(value, f'{where}{shown} must be a GPU number or a device name like "cpu" or "cuda:1"')
    return loaded
