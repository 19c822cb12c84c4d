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

from diag import reader

Strategy = Literal["auto", "balanced", "balanced_low_0", "sequential"]
Kind = Literal["strategy", "device", "int", "dict", "empty", "none", "other"]
DeviceMapValue: TypeAlias = "str | int | float | dict[str, str | int] | None"

STRATEGIES: tuple[Strategy, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
ORIGIN_OPTION = "--device-map"
ORIGIN_MODEL_ARGS = "--model-args"
ORIGIN_AUTO_SPLIT = "AUTO_SPLIT"
ORIGIN_DEFAULT = "default"

EXPECTED = (
    "expected auto, balanced, balanced_low_0, sequential, cpu, cuda, cuda:N, N, a JSON object, "
    "or a map file as map.json or @map.json"
)
MAX_KEYS = 100_000  # modules in one map; a 100-layer model's finest map has a few thousand
WORKING_FILE_FORMS = "write --device-map map.json or --device-map=@map.json"
_INT = re.compile(r"-?[0-9]+")
# Values that are devices or strategies, never file names: a file called `cpu` does not turn `--device-map cpu`
# into a map file.
_DEVICE = re.compile(r"(cpu|cuda|disk|meta|mps|xpu)(:[0-9]+)?")
# One line of a map file written over several lines, as pytest hands it over after expanding a lone
# `@map.json` argument into the file's lines: `{`, `"vision_model": 0,`, `}`.
_MAP_LINE = re.compile(r'"[^"]*"\s*:|[}\]]')
_SPLIT_FILE = (
    "pytest expands `--device-map @map.json` (with a space) into the file's lines, so diag sees only the first; "
    + WORKING_FILE_FORMS
)


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
    """Read a `--device-map` value: a strategy, a device, an int, a JSON object, a map file, or "".

    A map file is `@map.json`, a path ending in `.json`, or any other existing file whose text is a JSON object.
    `--device-map @map.json` with a space never gets here whole: pytest expands the lone `@map.json` argument
    into the file's lines (argparse's fromfile_prefix_chars), so this option receives the first line, `{`. Such a
    fragment is a usage error that names the forms that work.
    """
    stripped = value.strip()
    if stripped.startswith("@"):
        return DeviceMapSource(_read_map_file(value, stripped[1:]), ORIGIN_OPTION, value)
    if stripped.startswith(("{", "[")):
        return DeviceMapSource(_map_from_json(value, stripped, where=""), ORIGIN_OPTION, value)
    if _INT.fullmatch(value):
        # Negative ints stay ints: transformers' own check names them ("can't pass device_map as a negative int").
        return DeviceMapSource(int(value), ORIGIN_OPTION, value)
    if value not in STRATEGIES and not _DEVICE.fullmatch(value):
        if stripped.lower().endswith(".json"):
            return DeviceMapSource(_read_map_file(value, stripped), ORIGIN_OPTION, value)
        from_file = _map_from_any_file(value, stripped)
        if from_file is not None:
            return DeviceMapSource(from_file, ORIGIN_OPTION, value)
        if _MAP_LINE.match(stripped):
            raise _syntax_error(value, f"this is one line of a map file, not a map; {_SPLIT_FILE}", expected=False)
    # "", "gpu", "cuda:x" and friends are kept: the validator runs them through transformers' own check.
    return DeviceMapSource(value, ORIGIN_OPTION, value)


def _map_from_any_file(value: str, path_text: str) -> dict[str, str | int] | None:
    """The map in an existing regular file whose whole text is a JSON object; None for anything else."""
    try:
        if not path_text or not Path(path_text).is_file():
            return None
        text = reader.read_text(path_text)
        loaded = reader.loads(text, reader.name(path_text))
    except (OSError, ValueError):  # ValueError: a NUL in the name; InputError: not UTF-8, too large, not JSON
        return None
    if not isinstance(loaded, dict):
        return None
    return _map_from_json(value, text, where=f"file {reader.name(path_text)}: ")


def _syntax_error(value: str, problem: str, *, expected: bool = True) -> DeviceMapSyntaxError:
    shown = value if len(value) <= 1000 else f"{value[:100]}… ({len(value):,} characters)"
    return DeviceMapSyntaxError(f"--device-map {shown!r}: {problem}" + (f"; {EXPECTED}" if expected else ""))


def _read_map_file(value: str, path_text: str) -> dict[str, str | int]:
    if not path_text:
        raise _syntax_error(value, "no file after '@'")
    try:
        text = reader.read_text(path_text)  # a regular file only: a FIFO or /dev/zero is refused, never read
    except reader.InputError as exc:
        raise _syntax_error(value, f"file {exc}", expected=False) from None
    return _map_from_json(value, text, where=f"file {reader.name(path_text)}: ")


def _unbalanced(text: str) -> bool:
    """More opening than closing braces or brackets: the start of a JSON object cut off after a line."""
    return text.count("{") + text.count("[") > text.count("}") + text.count("]")


def _map_from_json(value: str, text: str, *, where: str) -> dict[str, str | int]:
    """The dict json.loads gives, kept as written; only objects of ints and strings pass, at most MAX_KEYS."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"{where}not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        if not where and _unbalanced(text):
            # `{` or `{"vision_model": 0,`: most likely the first line of a map file that pytest split.
            raise _syntax_error(value, f"{problem}; if it is the first line of a map file, {_SPLIT_FILE}",
                                expected=False) from None  # fmt: skip
        raise _syntax_error(value, problem) from None
    except RecursionError:
        raise _syntax_error(value, f"{where}nested deeper than {reader.MAX_DEPTH} levels", expected=False) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise _syntax_error(value, f"{where}not usable JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, dict):
        raise _syntax_error(value, f"{where}a JSON {type(loaded).__name__}, not an object of module names")
    if len(loaded) > MAX_KEYS:
        raise _syntax_error(value, f"{where}{len(loaded):,} modules, more than the {MAX_KEYS:,} diag reads",
                            expected=False)  # fmt: skip
    bad = [key for key, entry in loaded.items() if isinstance(entry, bool) or not isinstance(entry, int | str)]
    if bad:
        shown = ", ".join(f"{key!r}: {reader.describe(loaded[key])}" for key in bad[:3])
        more = f" (and {len(bad) - 3:,} more)" if len(bad) > 3 else ""
        raise _syntax_error(value, f'{where}{shown}{more} must be a GPU number or a device name like "cpu" or "cuda:1"')
    return loaded
