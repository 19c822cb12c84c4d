"""The JSON report (`diag-report/1`): environment, topology, checks with their fixes; redacted, written atomically."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import re
import secrets
import stat
import string
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from diag import redact
from diag.reader import file_kind
from diag.redact import (  # noqa: F401  (the names callers import from here)
    EVAL_COMMAND_OPTION,
    REDACTED,
    is_secret_name,
    redacted_command,
    redacted_shell_command,
)
from diag.topology.records import Topology, uuid_key

SCHEMA = "diag-report/1"
DEFAULT_PATH = "reports/diag-report.json"
RANK_PATH = "reports/diag-report-{host}-rank{rank}.json"  # the default under a launcher: one report per rank
PLACEHOLDERS = ("rank", "host")
_ENV_PREFIXES = ("CUDA_", "NCCL_", "SLURM_", "HF_", "TRANSFORMERS_", "ACCELERATE_", "PYTORCH_", "TORCH_")
_ENV_NAMES = frozenset(
    {"LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "AUTO_SPLIT",
     "GPUS_PER_PROCESS", "DIST_TIMEOUT", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS"}
)  # fmt: skip


def redacted_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that shape a GPU run, with the values of secret-named ones replaced and URLs' users removed."""
    kept = [k for k in environ if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)]
    return redact.redacted_env(environ, kept)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def installed_torch_cuda() -> str | None:
    """torch.version.cuda of the installed torch, read from its file so the report never imports torch (and
    never reads torch's RECORD of thousands of files)."""
    loaded = sys.modules.get("torch.version")
    if loaded is not None:
        return getattr(loaded, "cuda", None)
    try:
        spec = importlib.util.find_spec("torch")  # a top-level package: found, not imported
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        version_file = Path(folder) / "version.py"
        if version_file.is_file():
            text = version_file.read_text(encoding="utf-8")
            match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
            return match[1] if match else None
    return None


def environment_section(
    topology: Topology | None, environ: Mapping[str, str], overridden: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """Versions, driver and the environment in force for the run; `env_before_diag` keeps what --gpus replaced."""
    before = {k: (REDACTED if is_secret_name(k) else v) for k, v in (overridden or {}).items()}  # None: was unset
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torch_cuda": installed_torch_cuda(),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "diag": _version("diag"),
        "driver": topology.node.driver_version if topology else None,
        "cuda_driver": topology.node.cuda_driver_version if topology else None,
        "env": redacted_env(environ),
        "env_before_diag": before,
    }


def topology_section(topology: Topology | None) -> dict[str, Any]:
    """The node's GPUs with their CUDA ordinal in this run (`cuda_index` None: not visible) and the selection."""
    if topology is None:
        return {"source": None, "gpus": [], "selected": []}
    cuda_by_uuid = {uuid_key(d.uuid): d.cuda_index for d in topology.cuda.devices}
    gpus = []
    for gpu in topology.node.gpus:
        entry = asdict(gpu)
        keys = [uuid_key(u) for u in (gpu.uuid, *gpu.mig_uuids)]
        entry["cuda_index"] = next((cuda_by_uuid[k] for k in keys if k in cuda_by_uuid), None)
        gpus.append(entry)
    selection = topology.selection
    chosen = set(selection.nvml_indices)
    return {
        "source": topology.node.source,
        "hostname": topology.node.hostname,
        "spec": topology.node.spec,
        "nvml_error": asdict(topology.node.nvml_error) if topology.node.nvml_error else None,
        "gpus": gpus,
        "selected": [e.token for e in selection.entries],
        "selection": {
            "origin": selection.origin,
            "nvml_indices": list(selection.nvml_indices),
            "missing": list(selection.missing),
            "cuda_visible_devices": selection.cuda_visible_devices,
            "cuda_device_order": selection.cuda_device_order,
        },
        "cuda": {
            "torch_cuda": topology.cuda.torch_cuda,
            "error": topology.cuda.error,
            "simulated": topology.cuda.simulated,
            "devices": [asdict(d) for d in topology.cuda.devices],
        },
        **_p2p_section(topology, chosen),
    }


P2P_ALL_PAIRS_GPUS = 16  # up to this many selected GPUs the report lists every reported pair
P2P_LISTED = 64  # beyond, only pairs without peer access, this many at most, and counts


def _p2p_section(topology: Topology, chosen: set[int]) -> dict[str, Any]:
    """Peer access among the selected GPUs: every pair for a small selection; for a large one (a 1,000-GPU node has
    half a million pairs) the first P2P_LISTED pairs without access, with `p2p_counts` saying how many there are."""
    pairs = [p for p in topology.node.p2p if p[0] in chosen and p[1] in chosen]
    if len(chosen) <= P2P_ALL_PAIRS_GPUS:
        return {"p2p": [list(p) for p in pairs]}
    without = sorted((min(a, b), max(a, b), ok) for a, b, ok in pairs if ok is not True)
    return {
        "p2p": [list(p) for p in without[:P2P_LISTED]],
        "p2p_counts": {"reported": len(pairs), "without_access": len(without), "listed": min(len(without), P2P_LISTED)},
    }


def summary_section(checks: Sequence[Mapping[str, Any]], duration_s: float) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for check in checks:
        counts[check["outcome"]] += 1
    return {
        "passed": counts["passed"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "errors": counts["error"],
        "duration_s": round(duration_s, 3),
    }


def build_report(
    *,
    command: Sequence[str],
    topology: Topology | None,
    checks: Sequence[Mapping[str, Any]],
    duration_s: float,
    environ: Mapping[str, str],
    overridden: Mapping[str, str | None] | None = None,
    host: str | None = None,
    launch: Mapping[str, Any] | None = None,
    eval_command: Sequence[str] | None = None,
    interrupted: str | None = None,
) -> dict[str, Any]:
    """The whole report as JSON data (`diag-report/1`, diag/schema/diag-report-1.json; added fields, no renames).

    `host` is the machine that ran the checks; `launch` this process's place in a launched job (rank, world size,
    local rank, launcher, rendezvous), None when no launcher started it. `eval_command` the eval command the
    checks were for (--eval-command, which `python -m diag run` passes), redacted like `command` and shell-quoted.
    `interrupted` what stopped the run before its end (SIGTERM, KeyboardInterrupt), None when it ended on its own.
    """
    known = redact.secrets_of(command, environ, eval_command)
    report = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": redacted_command(command),
        "eval_command": redacted_shell_command(eval_command) if eval_command is not None else None,
        "host": host,
        "launch": dict(launch) if launch is not None else None,
        "environment": environment_section(topology, environ, overridden),
        "topology": topology_section(topology),
        "summary": summary_section(checks, duration_s),
        "checks": list(checks),
        # The run was stopped before it finished ("SIGTERM", "KeyboardInterrupt"): summary and checks are as far
        # as it got. null for a run that ended on its own.
        "interrupted": interrupted,
    }
    # Every string of the report, `checks[].data` and messages included, through the one redaction.
    redacted: dict[str, Any] = redact.redact_data(report, known)
    return redacted


class ReportPathError(ValueError):
    """--diag-report has a placeholder other than {rank} and {host}, or unbalanced braces."""


def report_path(template: str | None, rootpath: Path, rank: int | None, host: str) -> Path:
    """Where this run's report goes: --diag-report with {rank} and {host} filled in, else the default, which
    names the host and the rank under a launcher (`reports/diag-report-node1-rank3.json`) so ranks never
    overwrite each other's reports. Without a launcher {rank} is 0."""
    if template is None:
        return Path(rootpath, RANK_PATH.format(rank=rank, host=host) if rank is not None else DEFAULT_PATH)
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ReportPathError(f"--diag-report {template!r}: {exc}; expected {{rank}} and {{host}}") from None
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise ReportPathError(
            f"--diag-report {template!r} has {{{unknown[0]}}}: expected only the placeholders {{rank}} and {{host}}"
        )
    return Path(rootpath, template.format(rank=0 if rank is None else rank, host=host))


def _new_temp_file(target: Path) -> tuple[int, Path]:
    """A new file beside the target, created with mode 0666 so the umask shapes it as it does any new file
    (0644 under umask 022; tempfile.mkstemp would make it 0600)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


class ReportTargetError(OSError):
    """The report path names something other than a regular file (a device, a FIFO, a directory, a symlink)."""


def refuse_unless_regular(path: str | os.PathLike[str]) -> None:
    """Raise ReportTargetError unless `path` is absent or a regular file (not followed through a symlink).

    diag replaces the report by renaming a new file onto the path: onto /dev/null, a FIFO or a symlink that would
    replace the node itself, so only a regular file (or nothing) may stand there.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there (or a parent is no folder): nothing to replace; writing says what is wrong
        return
    if not stat.S_ISREG(mode):
        raise ReportTargetError(
            f"{path} is {file_kind(mode)}, not a regular file: diag writes its report only to a regular file "
            "(or a new one)"
        )


TEMP_NAME = r"\.{name}\.[0-9a-f]{{12}}\.tmp"  # what _new_temp_file names a temporary file beside the report
STALE_TEMP_S = 600.0  # a temporary file older than this was left by a killed run (a write takes milliseconds)


def write_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Replace the report file atomically (a reader sees the old or the new file, never half of one).

    Only a regular file is ever replaced (ReportTargetError otherwise). The file gets the permissions the umask
    gives any new file, as if written in place. The temporary file is removed on every exit path that Python sees
    (an exception, KeyboardInterrupt, SIGTERM through diag's handler); one a SIGKILL left behind is removed by the
    next write to the same path once it is older than STALE_TEMP_S.
    """
    target = Path(path)
    refuse_unless_regular(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(target)
    fd, tmp = _new_temp_file(target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, default=str)
            handle.write("\n")
        refuse_unless_regular(target)  # narrow the window in which something else could have appeared there
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_stale_report(path: str | os.PathLike[str]) -> bool:
    """Remove a previous diag report at `path` (this run wrote none), so no script reads its stale results.

    Only a regular file that holds a diag report (`"schema": "diag-report/1"`) is removed; anything else stays.
    Returns whether a file was removed.
    """
    target = Path(path)
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return False
        with target.open(encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    if not re.search(r'"schema"\s*:\s*"' + re.escape(SCHEMA) + '"', head):
        return False
    try:
        target.unlink()
    except OSError:
        return False
    return True


def _remove_stale_temp_files(target: Path) -> None:
    pattern = re.compile(TEMP_NAME.format(name=re.escape(target.name)))
    now = time.time()
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S:
                os.unlink(entry.path)
        except OSError:
            continue
