"""The one way diag reads a file a user names: `--topology`, `--device-map` map files, `--model` configs (and the
hub cache's), and the reports given to `python -m diag merge`.

Only a regular file is read: a FIFO, a device (`/dev/zero`), a directory or a socket is refused before it is
opened (and it is opened non-blocking, so a file swapped for a FIFO in between cannot block either). The size is
capped (at most `MAX_BYTES` are read), the JSON nesting depth is capped, numbers must be finite, and every
problem is an `InputError` with one line that names the file and, where it applies, the field
(`gpus[3].memory_total_mib: …`). The callers turn it into their own usage error.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from typing import Any

MAX_BYTES = 64 * 1024 * 1024  # a 1,024-GPU topology or a 100,000-key map is a few MiB
MAX_DEPTH = 64  # diag's own files nest 5 levels; config.json files fewer than 10
MAX_ITEMS = 5_000_000  # values in one file, whatever their nesting


class InputError(ValueError):
    """A file diag cannot use: missing, not a regular file, too large, not JSON, or the wrong structure.

    The message is one line and starts with the file's path (or the option's value for inline JSON).
    """


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words (from `stat`, or `lstat` for a link); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def name(path: str | os.PathLike[str]) -> str:
    """The path as messages show it: as written, or quoted when it holds a newline or another control character."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)


def _size(count: int) -> str:
    return f"{count / (1024 * 1024):.0f} MiB" if count >= 1024 * 1024 else f"{count} bytes"


def read_bytes(path: str | os.PathLike[str], *, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is an InputError."""
    where = name(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise InputError(f"{where}: cannot read it ({_one_line(getattr(exc, 'strerror', None) or exc)})") from None
    kind = file_kind(mode)
    if kind:
        raise InputError(f"{where}: is {kind}, not a regular file; diag reads only regular files")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({_one_line(exc.strerror or exc)})") from None
    try:
        info = os.fstat(fd)  # what was opened, not what was stat'ed: the name may have been swapped in between
        kind = file_kind(info.st_mode)
        if kind:
            raise InputError(f"{where}: is {kind}, not a regular file; diag reads only regular files")
        if info.st_size > limit:
            raise InputError(f"{where}: {_size(info.st_size)}, larger than the {_size(limit)} diag reads")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({_one_line(exc.strerror or exc)})") from None
    finally:
        os.close(fd)
    if total > limit:
        raise InputError(f"{where}: larger than the {_size(limit)} diag reads")
    return b"".join(chunks)


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file (see `read_bytes`)."""
    data = read_bytes(path, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def field(path: tuple[str | int, ...]) -> str:
    """`gpus[3].memory_total_mib` for ("gpus", 3, "memory_total_mib"); "the top level" for ()."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def _walk(value: Any) -> Iterator[tuple[tuple[str | int, ...], Any, int]]:
    """(path, value, depth) of every value, without recursion."""
    stack: list[tuple[tuple[str | int, ...], Any, int]] = [((), value, 1)]
    while stack:
        path, item, depth = stack.pop()
        yield path, item, depth
        if isinstance(item, dict):
            stack.extend(((*path, str(k)), v, depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend(((*path, i), v, depth + 1) for i, v in enumerate(item))


def check_structure(data: Any, where: str, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth`, more than MAX_ITEMS values, and NaN or infinite numbers."""
    for count, (path, item, depth) in enumerate(_walk(data)):
        if depth > max_depth:
            shown = field(path[:6]) + ("…" if len(path) > 6 else "")
            raise InputError(f"{where}: {shown}: nested deeper than {max_depth} levels")
        if count >= MAX_ITEMS:
            raise InputError(f"{where}: more than {MAX_ITEMS:,} values")
        if isinstance(item, float) and not math.isfinite(item):
            raise InputError(f"{where}: {field(path)}: {item!r} is not a finite number (1e999 is infinite in JSON)")


def loads(text: str, where: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text as Python values, bounded like a file (for inline JSON such as `--device-map '{...}'`)."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{where}: larger than the {_size(MAX_BYTES)} diag reads")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InputError(f"{where}: not usable JSON ({_one_line(exc)})") from None
    check_structure(data, where, max_depth=max_depth)
    return data


def load_json(path: str | os.PathLike[str], *, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A regular JSON file of at most `limit` bytes, nested at most `max_depth` deep, numbers finite."""
    return loads(read_text(path, limit=limit), name(path), max_depth=max_depth)


# Small typed validators: each returns the value or raises InputError naming the field.


def describe(value: Any) -> str:
    """The value as JSON, shortened, for messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"a nested {type(value).__name__}" if isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def fail(where: str, path: tuple[str | int, ...], expected: str, value: Any) -> InputError:
    return InputError(f"{where}: {field(path)}: expected {expected}, got {describe(value)}")


def whole(where: str, path: tuple[str | int, ...], value: Any, expected: str, *, low: int, high: int) -> int:
    """A JSON whole number in [low, high] (a float such as 80.0 counts); anything else is an InputError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, path, expected, value)
    if isinstance(value, float) and not value.is_integer():
        raise fail(where, path, expected, value)
    if not low <= value <= high:
        raise fail(where, path, expected, value)
    return int(value)


def optional_str(where: str, path: tuple[str | int, ...], value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise fail(where, path, "a string or null", value)
    return value


def optional_bool(where: str, path: tuple[str | int, ...], value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise fail(where, path, "true, false or null", value)
    return value
