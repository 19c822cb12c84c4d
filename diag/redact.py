"""Redaction: the one place that decides what diag never writes or prints.

Every exit goes through here: the report (``redact_data`` over the whole structure, ``checks[].data`` included),
the fleet report, pytest-json-report's `diag` section, the JUnit properties, the terminal lines and the wrapper's
output. Two layers:

- by form: a secret-named key's value (`token=…`, `api_key="a,b"`, `--hf_token X`, `--openai-api-key=X`,
  `HF_TOKEN=…` before a command, `{'password': …}`) and the user part of a URL (`https://user:pass@host`);
- by value: the secrets found by form in this run's inputs (command line, eval command, environment) are
  remembered and replaced wherever else they appear verbatim (a quoted message, a fix's command, a piece of a
  value split at a comma), so a message that quotes an input in another shape still cannot carry them.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"
EVAL_COMMAND_OPTION = "--eval-command"
MIN_KNOWN_LENGTH = 6  # shorter values are not replaced verbatim everywhere (they would blank common words)

_SECRET_WORDS = r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH|COOKIE"
_SECRET_WORD = re.compile(_SECRET_WORDS, re.IGNORECASE)
# Names that contain a secret word without naming a secret: tokenizers, token counts, authors.
_NOT_SECRET = re.compile(r"tokeni[sz]\w*|tokens|author\w*|keyword\w*", re.IGNORECASE)
_NAME = r"[A-Za-z0-9_.-]*"
_DQ = r'"(?:\\.|[^"\\])*"?'
_SQ = r"'(?:\\.|[^'\\])*'?"
# In free text: `key=value`, a quoted `'key': value` (a dict's repr, JSON) and `--flag value`. A value is a run of
# a quoted string or a bare word; a bare word ends at a comma, whitespace or a closing bracket (a flag's at whitespace).
_TEXT_VALUE = rf"(?:{_DQ}|{_SQ}|,*[^,\s}})\]'\"]+)"
_SHELL_WORD = rf"(?!-)(?:{_DQ}|{_SQ}|[^\s'\"])+"
_TEXT_PAIR = re.compile(
    rf"(?P<oq>['\"])(?P<okey>{_NAME}(?:{_SECRET_WORDS}){_NAME})(?P<osep>=)(?P<ovalue>(?:(?!(?P=oq)).)*)"
    rf"|(?P<key>{_NAME}(?:{_SECRET_WORDS}){_NAME})(?P<sep>=)(?P<value>{_TEXT_VALUE})"
    rf"|(?P<qkey>(?P<q>['\"]){_NAME}(?:{_SECRET_WORDS}){_NAME}(?P=q))(?P<qsep>\s*:\s*)(?P<qvalue>{_TEXT_VALUE})"
    rf"|(?P<flag>(?<![\w-])--?[A-Za-z]{_NAME}(?:{_SECRET_WORDS}){_NAME})(?P<fsep>\s+)(?P<fvalue>{_SHELL_WORD})",
    re.IGNORECASE,
)
# `key=value` inside one command-line argument: the value runs to the comma that starts the next `name=` item
# (lmms-eval's --model_args), or to the end (`HF_TOKEN=a,b`); a value that starts quoted is taken whole with what
# follows its quotes up to the next comma (`''tail`, `'a b'c`), and quoted parts of a bare value keep their commas.
_NEXT = r",(?!\s*[A-Za-z_][\w.-]*\s*=)"  # a comma that does not start the next `name=` item
_ARG_PAIR = re.compile(
    rf"(?P<key>{_NAME}(?:{_SECRET_WORDS}){_NAME})=(?P<value>(?:{_DQ}|{_SQ})(?:{_DQ}|{_SQ}|[^,'\"])*"
    rf"|(?:[^,'\"]|{_NEXT})(?:{_DQ}|{_SQ}|[^,'\"]|{_NEXT})*|)",
    re.IGNORECASE,
)
# The user part of a URL (`https://user:pass@host`, `git+ssh://tok@host`) and a scheme-less `user:pass@host`.
_URL_USER = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<value>[^/?#\s@]*@)")
_BARE_USER = re.compile(r"(?P<pre>^|[\s=,'\"(])(?P<value>[^\s/@:=,'\"]+:[^\s/@]+@)(?=[A-Za-z0-9\[])")

_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)", re.DOTALL)


def is_assignment(word: str) -> bool:
    """A shell word `NAME=value` that sets a variable when it comes before the program."""
    return _ASSIGNMENT.fullmatch(word) is not None


_known: frozenset[str] = frozenset()


def is_secret_name(name: str) -> bool:
    """Whether a variable, key or option name marks a secret (its value is never written or printed)."""
    if name.strip("-_ ").lower() in ("key", "keys"):  # the generic word (`key=value`), not a credential
        return False
    return bool(_SECRET_WORD.search(_NOT_SECRET.sub("", name)))


# -- by form ----------------------------------------------------------------------------------------------------
# A secret-named pair is hidden whole before the user parts of URLs are looked for: a value such as `0:0@xyz` would
# otherwise lose only its `0:0` to the URL rule, and the rest would no longer be a value the pair rule hides.
def _urls(text: str, found: list[str] | None) -> str:
    def url(match: re.Match[str]) -> str:
        if found is not None:
            found.append(match["value"][:-1])
        return f"{match['scheme']}{REDACTED}@"

    def bare(match: re.Match[str]) -> str:
        if found is not None:
            found.append(match["value"][:-1])
        return f"{match['pre']}{REDACTED}@"

    return _BARE_USER.sub(bare, _URL_USER.sub(url, text))


def _pairs(pattern: re.Pattern[str], text: str, found: list[str] | None) -> str:
    def pair(match: re.Match[str]) -> str:
        groups = match.groupdict()
        names = (
            ("okey", "osep", "ovalue"),
            ("key", "sep", "value"),
            ("qkey", "qsep", "qvalue"),
            ("flag", "fsep", "fvalue"),
        )
        key, sep, value = next((n for n in names if groups.get(n[0]) is not None), names[-1])
        if not is_secret_name(groups[key].strip("'\"-")) or groups[value].strip("'\"").startswith(REDACTED):
            return match[0]
        if found is not None:
            found.append(groups[value])
        return f"{groups.get('oq') or ''}{groups[key]}{groups.get(sep) or '='}{REDACTED}"

    return pattern.sub(pair, text)


def redact_form(text: str, found: list[str] | None = None) -> str:
    """Free text with the secrets recognisable by their form hidden (`found` collects what was hidden)."""
    return _urls(_pairs(_TEXT_PAIR, text, found), found)


def _redact_arg(arg: str, found: list[str] | None) -> str:
    return _urls(_pairs(_ARG_PAIR, arg, found), found)


def redacted_args(args: Sequence[str], found: list[str] | None = None) -> list[str]:
    """A command line, argument by argument: `--hf_token X` hides X, `key=value` (in --model_args too) hides
    the value up to the next comma, quoted values whole; --eval-command's value is redacted as a command."""
    out: list[str] = []
    hide_next = inner_next = False
    leading = True  # `NAME=value` words before the program (or after `env`) are the shell's assignments
    for arg in args:
        assignment = _ASSIGNMENT.fullmatch(arg)
        if leading and assignment:
            if is_secret_name(assignment["name"]):  # the whole word after `=` is the value, commas and all
                if found is not None:
                    found.append(assignment["value"])
                out.append(f"{assignment['name']}={REDACTED}")
            else:
                out.append(_redact_arg(arg, found))
            continue
        leading = leading and arg == "env"
        if hide_next:
            if found is not None:
                found.append(arg)
            out.append(REDACTED)
            hide_next = False
            continue
        if inner_next or arg.startswith(EVAL_COMMAND_OPTION + "="):  # a whole command line in one argument
            out.append(_redacted_inner(arg, found))
            inner_next = False
            continue
        flag = arg.startswith("-") and arg.lstrip("-")[:1].isalpha()
        name, equals, value = arg.partition("=")
        hide_next = flag and not equals and is_secret_name(arg)
        inner_next = arg == EVAL_COMMAND_OPTION
        if flag and equals and is_secret_name(name):  # `--openai-api-key=X`: all of X, commas included
            if found is not None:
                found.append(value)
            out.append(f"{name}={REDACTED}")
            continue
        out.append(_redact_arg(arg, found))
    return out


def _redacted_inner(arg: str, found: list[str] | None) -> str:
    prefix, value = (arg.split("=", 1)[0] + "=", arg.split("=", 1)[1]) if arg.startswith("--") else ("", arg)
    try:
        return prefix + shlex.join(redacted_args(shlex.split(value), found))
    except ValueError:  # not a shell command line (an open quote): its words redacted one by one
        return prefix + redact_form(" ".join(redacted_args(value.split(), found)), found)


def redacted_command(args: Sequence[str]) -> str:
    """The command line, space-joined, with its secrets hidden."""
    return _replace_known(" ".join(redacted_args(args)), _known)


def redacted_shell_command(args: Sequence[str]) -> str:
    """The command line shell-quoted (pasteable once the secrets are filled back in), secrets hidden."""
    return _replace_known(shlex.join(redacted_args(args)), _known)


def redact_command_line(text: str) -> str:
    """A command line held as one string (a process name read from a topology file): argument by argument where
    it splits as a shell line, its words one by one otherwise; then as free text."""
    try:
        return redact_text(shlex.join(redacted_args(shlex.split(text))))
    except ValueError:  # an open quote: not a shell line
        return redact_text(" ".join(redacted_args(text.split())))


def redacted_model_args(text: str) -> str:
    """lmms-eval's --model_args string with secret-named values hidden (quoted values with commas whole)."""
    return _replace_known(_redact_arg(text, None), _known)


# -- by value ---------------------------------------------------------------------------------------------------
def _variants(value: str) -> set[str]:
    """The shapes a secret takes when quoted by Python, JSON or a shell, unquoted, or split at commas/spaces."""
    value = value.strip()
    shapes = {value}
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        shapes.add(value[1:-1])
    elif value[:1] in "'\"":
        shapes.add(value[1:])
    for shape in list(shapes):
        shapes |= {repr(shape)[1:-1], json.dumps(shape)[1:-1], shlex.quote(shape)}
        shapes |= set(re.split(r"[,\s'\"=\\]+", shape))
    return {s for s in shapes if len(s) >= MIN_KNOWN_LENGTH and s != REDACTED}


def secrets_of(
    args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    eval_command: Sequence[str] | None = None,
    extra: Iterable[str] = (),
) -> frozenset[str]:
    """The secret values in a run's inputs, in every shape they may take in a message."""
    found: list[str] = list(extra)
    redacted_args(args, found)
    redacted_args(eval_command or (), found)
    for name, value in (environ or {}).items():
        if is_secret_name(name):
            found.append(value)
        else:
            redact_form(f"{name}={value}", found)
    shapes: set[str] = set()
    for value in found:
        shapes |= _variants(value)
    return frozenset(shapes)


def remember(values: Iterable[str]) -> None:
    """The secrets of the current run, replaced verbatim in everything `redact_text` sees from now on."""
    global _known
    _known = frozenset(values)


def known() -> frozenset[str]:
    return _known


def _replace_known(text: str, values: Iterable[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_text(text: str, values: Iterable[str] | None = None) -> str:
    """One string as diag may print or write it: known secrets (this run's, plus `values`) and secret forms hidden."""
    text = _replace_known(text, _known if values is None else _known | set(values))
    return redact_form(text)


def redact_data(data: Any, values: Iterable[str] | None = None, *, secret: bool = False) -> Any:
    """JSON-like data with every string redacted, and every value under a secret-named key hidden whole."""
    shapes = frozenset(values or ()) | _known
    return _walk(data, shapes, secret)


def _walk(data: Any, shapes: frozenset[str], secret: bool) -> Any:
    if isinstance(data, Mapping):
        return {
            (_text(k, shapes) if isinstance(k, str) else k): _walk(v, shapes, secret or _named(k))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return (
            type(data)(_walk(v, shapes, secret) for v in data)
            if isinstance(data, tuple)
            else [_walk(v, shapes, secret) for v in data]
        )
    if secret and data is not None and not isinstance(data, bool):
        return REDACTED
    if isinstance(data, str):
        return _text(data, shapes)
    return data


def _named(key: object) -> bool:
    return isinstance(key, str) and is_secret_name(key)


def _text(text: str, shapes: frozenset[str]) -> str:
    return redact_form(_replace_known(text, shapes))


def redacted_env(environ: Mapping[str, str], names: Iterable[str] | None = None) -> dict[str, str]:
    """Variables with secret-named values hidden and URLs' user parts removed (all of them, or only `names`)."""
    wanted = environ if names is None else {k: environ[k] for k in names if k in environ}
    return {k: (REDACTED if is_secret_name(k) else redact_text(v)) for k, v in sorted(wanted.items())}
