"""`python -m diag merge`: the per-rank reports of one launched job joined into one fleet report.

The fleet report (`schema: "diag-fleet/1"`) keeps every check of every rank (`checks[]`, each with its `host` and
`rank`, so the jq recipes for one report work on it), and adds a view per node and per GPU, the failures grouped
by fix code, and the ranks of the job that sent no report.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag import reader
from diag.fixes import CATALOG
from diag.redact import redact_data, redact_text, secrets_of
from diag.report import SCHEMA
from diag.topology.records import uuid_key

FLEET_SCHEMA = "diag-fleet/1"
_GPU_PARAM = re.compile(r"\[gpu(\d+)\]")
_GPU_SUBJECT = re.compile(r"\bGPU (\d+)\b")


class FleetError(ValueError):
    """A report that cannot be merged: missing, not JSON, not a diag report, or a rank given twice."""


@dataclass(frozen=True)
class Source:
    """One rank's report as merged: where it came from and whose it is."""

    path: str
    report: Mapping[str, Any]

    @property
    def launch(self) -> Mapping[str, Any]:
        launch = self.report.get("launch")
        return launch if isinstance(launch, dict) and "rank" in launch else {}

    @property
    def host(self) -> str:
        host = self.report.get("host") or self.report.get("topology", {}).get("hostname")
        return str(host) if host else "unknown-host"

    @property
    def rank(self) -> int | None:
        rank = self.launch.get("rank")
        return rank if isinstance(rank, int) else None

    @property
    def local_rank(self) -> int:
        local = self.launch.get("local_rank")
        return local if isinstance(local, int) else 0

    @property
    def label(self) -> str:
        return f"{self.host} rank {self.rank}" if self.rank is not None else self.host


def load_report(path: str | Path) -> Source:
    """Read one diag report; anything else is a FleetError with a one-line reason."""
    where = reader.name(path)
    try:
        data = reader.load_json(path)  # a regular file only, size and nesting capped
    except reader.InputError as exc:
        message = str(exc)
        if message.startswith(f"{where}: not valid JSON"):
            message = message.replace(": not valid JSON", ": not JSON", 1) + ", expected a diag report"
        raise FleetError(message) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == SCHEMA and "checks" in data and not isinstance(data["checks"], list):
        raise FleetError(f"{reader.fail(where, ('checks',), 'a list of checks', data['checks'])} (not a diag report "
                         "as pytest checks/ writes it)")  # fmt: skip
    if schema != SCHEMA or not isinstance(data.get("checks"), list):
        found = f"schema {schema!r}" if schema is not None else "no schema field"
        raise FleetError(f"{where}: not a diag report ({found}; expected {SCHEMA!r}, as pytest checks/ writes)")
    try:
        return Source(where, _checked_report(where, data))
    except reader.InputError as exc:
        raise FleetError(f"{exc} (not a diag report as pytest checks/ writes it)") from None


_Path = tuple[str | int, ...]
# The largest world size a report may claim: the merge lists the ranks it has no report from, so a claim of 2**31
# ranks (a corrupt or hostile file) would make it build a list of two billion numbers.
MAX_WORLD_SIZE = 1 << 20
_OUTCOMES = ("passed", "failed", "skipped", "error")


_MISSING = object()


def _obj(where: str, path: _Path, value: Any, *, null: bool = True) -> dict[str, Any]:
    """An object, or {} for a missing field (and for null where `null`)."""
    if value is _MISSING or (value is None and null):
        return {}
    if not isinstance(value, dict):
        raise reader.fail(where, path, "an object or null" if null else "an object", value)
    return value


def _objects(where: str, path: _Path, value: Any) -> list[dict[str, Any]]:
    """A list of objects, or [] for null or a missing field."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise reader.fail(where, path, "a list of objects", value)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise reader.fail(where, (*path, index), "an object", item)
    return value


def _strings(where: str, owner: Mapping[str, Any], path: _Path, keys: Iterable[str]) -> None:
    for key in keys:
        reader.optional_str(where, (*path, key), owner.get(key))


def _checked_report(where: str, data: dict[str, Any]) -> dict[str, Any]:
    """The report with the fields merge reads checked for type (one-line InputError naming the field); a null
    `launch` (no launcher) reads as an empty one, a null `topology` or `summary` is refused (the schema requires
    objects)."""
    for index, check in enumerate(_objects(where, ("checks",), data["checks"])):
        if not isinstance(check.get("nodeid"), str):
            raise reader.fail(where, ("checks", index, "nodeid"), "a pytest node id", check.get("nodeid"))
        if check.get("outcome") not in _OUTCOMES:
            raise reader.fail(where, ("checks", index, "outcome"), " or ".join(_OUTCOMES), check.get("outcome"))
        _strings(where, check, ("checks", index), ("subject", "code", "message"))
        fix = _obj(where, ("checks", index, "fix"), check.get("fix"))
        reader.optional_str(where, ("checks", index, "fix", "summary"), fix.get("summary"))
    summary = _obj(where, ("summary",), data.get("summary", _MISSING), null=False)  # the schema requires objects
    for key in ("passed", "failed", "skipped", "errors"):
        if key in summary:
            reader.whole(where, ("summary", key), summary[key], "a count >= 0", low=0, high=1 << 53)
    _strings(where, data, (), ("host", "created"))
    launch = _obj(where, ("launch",), data.get("launch"))
    for key, low in (("rank", 0), ("local_rank", 0), ("world_size", 1)):
        if launch.get(key) is not None:
            reader.whole(where, ("launch", key), launch[key], f"a whole number from {low} to {MAX_WORLD_SIZE:,}",
                         low=low, high=MAX_WORLD_SIZE)  # fmt: skip
    topology = _obj(where, ("topology",), data.get("topology", _MISSING), null=False)
    _strings(where, topology, ("topology",), ("hostname", "source"))
    for index, gpu in enumerate(_objects(where, ("topology", "gpus"), topology.get("gpus"))):
        at: _Path = ("topology", "gpus", index)
        _strings(where, gpu, at, ("uuid", "name"))
        mig = gpu.get("mig_uuids")
        if mig is not None and (not isinstance(mig, list) or not all(isinstance(u, str) for u in mig)):
            raise reader.fail(where, (*at, "mig_uuids"), "a list of strings", mig)
        if gpu.get("nvml_index") is not None:
            reader.whole(where, (*at, "nvml_index"), gpu["nvml_index"], "a GPU index >= 0", low=0, high=1 << 31)
    selection = _obj(where, ("topology", "selection"), topology.get("selection"))
    indices = selection.get("nvml_indices")
    if indices is not None and not isinstance(indices, list):
        raise reader.fail(where, ("topology", "selection", "nvml_indices"), "a list of GPU indices", indices)
    cuda = _obj(where, ("topology", "cuda"), topology.get("cuda"))
    for index, device in enumerate(_objects(where, ("topology", "cuda", "devices"), cuda.get("devices"))):
        _strings(where, device, ("topology", "cuda", "devices", index), ("uuid",))
    gpus = [{**g, "uuid": g.get("uuid") or "", "mig_uuids": g.get("mig_uuids") or []}
            for g in topology.get("gpus") or []]  # fmt: skip
    topology = {**topology, "gpus": gpus, "selection": {**selection, "nvml_indices": indices or []},
                "cuda": {**cuda, "devices": cuda.get("devices") or []}}  # fmt: skip
    return {**data, "summary": summary, "launch": launch, "topology": topology}


def _gpu_of_rank(source: Source) -> str | None:
    """The UUID of cuda:LOCAL_RANK in this rank's view, the GPU it works on."""
    devices = source.report.get("topology", {}).get("cuda", {}).get("devices", [])
    for device in devices:
        if device.get("cuda_index") == source.local_rank and device.get("uuid"):
            return uuid_key(device["uuid"])
    return None


def _gpus_named(check: Mapping[str, Any]) -> set[int]:
    """nvidia-smi indices a check is about: `[gpu4]` in its id or `GPU 4` in its subject."""
    found = {int(n) for n in _GPU_PARAM.findall(check.get("nodeid") or "")}
    found |= {int(n) for n in _GPU_SUBJECT.findall(check.get("subject") or "")}
    return found


def _bad(check: Mapping[str, Any]) -> bool:
    return check.get("outcome") in ("failed", "error")


def _node_view(host: str, sources: Sequence[Source]) -> dict[str, Any]:
    topology = sources[0].report.get("topology", {})
    gpus: list[dict[str, Any]] = []
    for gpu in topology.get("gpus", []):
        keys = {uuid_key(u) for u in (gpu.get("uuid", ""), *gpu.get("mig_uuids", [])) if u}
        users = sorted(s.rank for s in sources if s.rank is not None and _gpu_of_rank(s) in keys)
        failures = [
            {"rank": s.rank, "code": c.get("code") or "unknown", "nodeid": c.get("nodeid")}  # as by cause
            for s in sources
            for c in s.report["checks"]
            if _bad(c) and gpu.get("nvml_index") in _gpus_named(c)
        ]
        gpus.append({
            "nvml_index": gpu.get("nvml_index"), "name": gpu.get("name"), "uuid": gpu.get("uuid"),
            "memory_total_mib": gpu.get("memory_total_mib"), "memory_used_mib": gpu.get("memory_used_mib"),
            "selected": gpu.get("nvml_index") in topology.get("selection", {}).get("nvml_indices", []),
            "ranks": users, "failures": failures,
        })  # fmt: skip
    return {
        "host": host,
        "source": topology.get("source"),
        "ranks": sorted(s.rank for s in sources if s.rank is not None),
        "gpus": gpus,
    }


def _rank_row(source: Source) -> dict[str, Any]:
    summary = source.report.get("summary", {})
    gpu = _gpu_of_rank(source)
    gpus = source.report.get("topology", {}).get("gpus", [])
    nvml = next((g.get("nvml_index") for g in gpus if uuid_key(g.get("uuid", "")) == gpu), None)
    return {
        "host": source.host, "rank": source.rank, "local_rank": source.local_rank,
        "world_size": source.launch.get("world_size"), "path": source.path, "created": source.report.get("created"),
        "gpu_nvml_index": nvml, "gpu_uuid": gpu,
        "summary": {k: summary.get(k, 0) for k in ("passed", "failed", "skipped", "errors")},
        "codes": sorted({c["code"] for c in source.report["checks"] if _bad(c) and c.get("code")}),
    }  # fmt: skip


def _failures_by_cause(sources: Sequence[Source]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for source in sources:
        for check in source.report["checks"]:
            if not _bad(check):
                continue
            code = check.get("code") or "unknown"
            fix = CATALOG.get(code)
            group = groups.setdefault(code, {
                "code": code, "title": fix.title if fix else None, "fix": fix.fix if fix else None,
                "ranks": [], "places": [],
            })  # fmt: skip
            group["places"].append({
                "host": source.host, "rank": source.rank, "nodeid": check.get("nodeid"),
                "subject": check.get("subject"), "message": check.get("message"),
                "fix": (check.get("fix") or {}).get("summary"),
            })  # fmt: skip
            if source.rank not in group["ranks"]:
                group["ranks"].append(source.rank)
    return sorted(groups.values(), key=lambda g: (-len(g["places"]), g["code"]))


def _spans(ranks: Sequence[int]) -> str:
    """Sorted ranks as runs: `0-3, 5, 7-1023`."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _missing_ranks(sources: Sequence[Source]) -> tuple[list[int], list[int]]:
    """(ranks the job had but no report came from, the world sizes the reports claim)."""
    sizes = sorted({s.launch["world_size"] for s in sources if isinstance(s.launch.get("world_size"), int)})
    if not sizes:
        return [], []
    present = {s.rank for s in sources}
    return [r for r in range(max(sizes)) if r not in present], sizes


def merge(sources: Sequence[Source]) -> dict[str, Any]:
    """The fleet report of these ranks' reports; a rank given twice is a FleetError."""
    if not sources:
        raise FleetError("no reports to merge")
    seen: dict[tuple[str, int | None], str] = {}
    for source in sources:
        key = (source.host, source.rank)
        if key in seen:
            raise FleetError(
                f"{source.path} and {seen[key]} are both from {source.label}: give each rank's report once"
            )
        seen[key] = source.path
    by_host: dict[str, list[Source]] = {}
    for source in sorted(sources, key=lambda s: (s.rank is None, s.rank or 0, s.host)):
        by_host.setdefault(source.host, []).append(source)
    missing, sizes = _missing_ranks(sources)
    checks = [{**c, "host": s.host, "rank": s.rank} for s in sources for c in s.report["checks"]]
    totals = {
        k: sum(s.report.get("summary", {}).get(k, 0) for s in sources)
        for k in ("passed", "failed", "skipped", "errors")
    }
    fleet = {
        "schema": FLEET_SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": [s.path for s in sources],
        "summary": {
            **totals,
            "reports": len(sources),
            "nodes": len(by_host),
            "world_sizes": sizes,
            "missing_ranks": missing,
        },
        "ranks": [_rank_row(s) for group in by_host.values() for s in group],
        "nodes": [_node_view(host, group) for host, group in by_host.items()],
        "failures": _failures_by_cause(sources),
        "checks": checks,
    }
    # Reports written before redaction was total (or edited by hand) may carry secrets: hidden on the way out.
    redacted: dict[str, Any] = redact_data(fleet, _secrets_in(sources))
    return redacted


def _secrets_in(sources: Sequence[Source]) -> frozenset[str]:
    """The secrets the merged reports' own inputs name (their command lines and recorded variables)."""
    found: set[str] = set()
    for source in sources:
        report = source.report
        args: list[str] = []
        for key in ("command", "eval_command"):
            line = report.get(key)
            if isinstance(line, str):
                try:
                    args += shlex.split(line)
                except ValueError:
                    args += line.split()
        environment = report.get("environment")
        env = environment.get("env") if isinstance(environment, dict) else None
        variables = {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
        found |= secrets_of(args, variables)
    return frozenset(found)


def fleet_ok(fleet: Mapping[str, Any]) -> bool:
    summary = fleet["summary"]
    return not (summary["failed"] or summary["errors"] or summary["missing_ranks"])


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    cells = [list(header), *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def fleet_text(fleet: Mapping[str, Any]) -> str:
    """The fleet as text: one line per rank, one per GPU in use or failing, the failures by cause."""
    s = fleet["summary"]
    failed_ranks = sum(1 for r in fleet["ranks"] if r["codes"])
    lines = [f"fleet: {s['reports']} reports from {s['nodes']} node(s); {s['failed']} failed and {s['errors']} "
             f"errored checks on {failed_ranks} rank(s)"]  # fmt: skip
    lines += _table(
        ["host", "rank", "local", "GPU", "passed", "failed", "skipped", "errors", "codes"],
        ([r["host"], "-" if r["rank"] is None else r["rank"], r["local_rank"],
          "-" if r["gpu_nvml_index"] is None else r["gpu_nvml_index"], *r["summary"].values(),
          ",".join(r["codes"]) or "-"] for r in fleet["ranks"]),
    )  # fmt: skip
    gpu_rows = [
        [node["host"], g["nvml_index"], g["name"], f"{g['memory_used_mib']}/{g['memory_total_mib']}",
         ",".join(map(str, g["ranks"])) or "-", ",".join(sorted({f["code"] for f in g["failures"]})) or "-"]
        for node in fleet["nodes"] for g in node["gpus"] if g["ranks"] or g["failures"] or g["selected"]
    ]  # fmt: skip
    if gpu_rows:
        lines += ["", "GPUs:", *_table(["host", "GPU", "name", "used/total MiB", "ranks", "codes"], gpu_rows)]
    if s["missing_ranks"]:
        lines += ["", f"no report from rank(s) {_spans(s['missing_ranks'])} of {max(s['world_sizes'])}"]
    if fleet["failures"]:
        lines += ["", "failures by cause:"]
        for group in fleet["failures"]:
            ranks = ", ".join("-" if r is None else str(r) for r in group["ranks"])
            lines.append(f"{group['code']} {group['title'] or ''} ({len(group['places'])} on rank(s) {ranks})")
            for place in group["places"][:8]:
                who = f"{place['host']} rank {place['rank']}" if place["rank"] is not None else place["host"]
                lines.append(f"  {who}: {place['message']}")
            if len(group["places"]) > 8:
                lines.append(f"  … and {len(group['places']) - 8} more")
            if group["places"][0]["fix"]:
                lines.append(f"  fix: {group['places'][0]['fix']}")
    return redact_text("\n".join(lines))
