"""The state of one diag session: options, the node read once, the check results, the report."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from diag.checking import USER_PROPERTY
from diag.dist import ranks
from diag.dist.ranks import LaunchEnvError, launched_rank, rank_info
from diag.fixes import lookup
from diag.options import DiagOptions
from diag.reader import load_json
from diag.redact import remember, secrets_of
from diag.report import SCHEMA, ReportPathError, build_report, remove_stale_report, report_path, write_report
from diag.topology import build_topology
from diag.topology.files import cuda_view_from_dict, node_from_dict
from diag.topology.records import Topology
from diag.topology.selection import resolve_selection

if TYPE_CHECKING:
    import torch

    from diag.devicemap.cases import MapCase
    from diag.twins import ModelSpec

WORKER_TOPOLOGY = "diag_topology"


class DiagState:
    """Everything the plugin knows during one session; one per config, in the controller and each worker."""

    def __init__(self, config: pytest.Config, options: DiagOptions, active: bool) -> None:
        self.config = config
        self.options = options
        self.active = active
        # This run's secrets (command line, eval command, environment), hidden wherever a message quotes them.
        remember(secrets_of(config.invocation_params.args, os.environ, options.eval_command))
        self.started = time.monotonic()
        self.saved_env: dict[str, str | None] = {}
        self.results: dict[str, dict[str, Any]] = {}
        try:  # a launched rank writes its own report: reports/diag-report-<host>-rank<N>.json by default
            rank, host = launched_rank(os.environ), ranks.hostname()
            self.report_path = report_path(options.report_path, config.rootpath, rank, host)
        except ReportPathError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.launched = rank is not None
        self.written: Path | None = None
        self.write_error: str | None = None
        self.internal_error: str | None = None
        self.interrupted: str | None = None  # "SIGTERM" or "KeyboardInterrupt": the run stopped before its end
        self._finished: set[str] = set()  # checks whose teardown was reported: an interruption did not cut them
        self._topology: Topology | None = None
        self._map_cases: list[MapCase] | None = None
        self._meta_models: dict[tuple[str, str], torch.nn.Module] = {}

    @property
    def is_controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = self._load_topology()
        return self._topology

    def _load_topology(self) -> Topology:
        handed = getattr(self.config, "workerinput", {}).get(WORKER_TOPOLOGY)
        if handed is not None:  # an xdist worker: the controller already read NVML and ran the probe
            node = node_from_dict(handed["node"], replayed=False)
            selection = resolve_selection(node, self.options.gpus, os.environ)
            return Topology(node, cuda_view_from_dict(handed["cuda"]), selection)
        return build_topology(
            env=dict(os.environ), gpus=self.options.gpus, simulate=self.options.simulate, replay=self.options.topology
        )

    @property
    def map_cases(self) -> list[MapCase]:
        """The (model, device_map) pairs of this session, resolved once (collection in every worker needs them)."""
        if self._map_cases is None:
            from diag.devicemap.cases import map_cases

            self._map_cases = map_cases(self.options, self.topology)
        return self._map_cases

    def meta_model(self, spec: ModelSpec, dtype: str) -> torch.nn.Module:
        """The full-width meta model, built once per (model, dtype) for the whole session."""
        key = (spec.name, dtype)
        if key not in self._meta_models:
            import torch

            from diag.twins import build_meta

            self._meta_models[key] = build_meta(spec).to(getattr(torch, dtype))
        return self._meta_models[key]

    # -- results -------------------------------------------------------------------------------------------
    def record(self, report: pytest.TestReport) -> None:
        entry = self.results.setdefault(
            report.nodeid,
            {"nodeid": report.nodeid, "outcome": "passed", "duration_s": 0.0, "code": None, "message": None,
             "subject": None, "fix": None, "references": [], "warnings": [], "data": {}},
        )  # fmt: skip
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 4)
        if report.when == "teardown":
            self._finished.add(report.nodeid)
        warnings: list[dict[str, Any]] = []
        for name, value in report.user_properties:
            if name != USER_PROPERTY or not isinstance(value, dict):
                continue
            if "warning" in value:
                warnings.append(value["warning"])
            if "data" in value:
                entry["data"].update(value["data"])
            if "failure" in value:
                entry.update(value["failure"])
        if warnings:  # each phase's report carries all properties recorded so far
            entry["warnings"] = warnings
        outcome = _outcome(report)
        if outcome in ("failed", "error") and entry["outcome"] in ("passed", "skipped"):
            entry["outcome"] = outcome
            if entry["code"] is None:
                entry.update(_unexpected_failure(report))
        elif outcome == "skipped" and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
            entry["message"] = _skip_reason(report)

    def record_collect_error(self, report: pytest.CollectReport) -> None:
        fix = lookup("DIAG-003")
        self.results[report.nodeid or "<collection>"] = {
            "nodeid": report.nodeid, "outcome": "error", "duration_s": 0.0, "code": fix.code,
            "message": last_line(report.longreprtext), "subject": None,
            "fix": _catalog_fix(fix.code), "references": list(fix.references), "warnings": [], "data": {},
        }  # fmt: skip

    def record_configure_error(self, code: str, message: str, summary: str) -> None:
        """A finding that stops the run before any check (ENV-010): it is the report's one entry."""
        fix = {**_catalog_fix(code), "summary": summary}
        self.results["diag::configure"] = {
            "nodeid": "diag::configure", "outcome": "error", "duration_s": 0.0, "code": code, "message": message,
            "subject": None, "fix": fix, "references": list(lookup(code).references), "warnings": [], "data": {},
        }  # fmt: skip

    def report(self) -> dict[str, Any]:
        checks = list(self.results.values())
        if self.interrupted:  # a check cut short passed nothing: its setup's "passed" is not its outcome
            cut = f"not finished: the run was interrupted ({self.interrupted})"
            checks = [
                {**c, "outcome": "skipped", "message": cut}
                if c["outcome"] == "passed" and c["nodeid"] not in self._finished and "::" in c["nodeid"]
                else c
                for c in checks
            ]
        if self.internal_error:
            checks.append(
                {"nodeid": "diag::internal", "outcome": "error", "duration_s": 0.0, "code": "DIAG-002",
                 "message": self.internal_error, "subject": None, "fix": _catalog_fix("DIAG-002"),
                 "references": [], "warnings": [], "data": {}}
            )  # fmt: skip
        try:
            topology: Topology | None = self.topology
        except Exception:  # the report must still be written when reading the node itself failed
            topology = None
        return build_report(
            command=["pytest", *self.config.invocation_params.args],
            topology=topology,
            checks=checks,
            duration_s=time.monotonic() - self.started,
            environ=os.environ,
            overridden=self.saved_env,
            host=ranks.hostname(),
            launch=_launch_section(),
            eval_command=self.options.eval_command,
            interrupted=self.interrupted,
        )

    @property
    def collect_only(self) -> bool:
        """`--collect-only` / `--co`: no check runs, so there is no report to write."""
        return bool(self.config.getoption("collectonly", False))

    def remove_stale_maps(self) -> list[Path]:
        """Remove the corrected maps the previous run's report points to beside it, before this run writes its own.

        Only the controller of a run that checks does this, and not under a launcher (the ranks share the folder
        and one rank's cleaning would race another's writing). A map this run's command line names (a corrected
        map passed back as `--device-map`) is kept.
        """
        if not self.is_controller or self.collect_only or self.launched:
            return []
        keep = " ".join([*self.config.invocation_params.args, *(self.options.eval_command or ())])
        removed = []
        for path in stale_map_files(self.report_path):
            if path.name in keep:
                continue
            try:
                path.unlink()
            except OSError:
                continue  # gone already, or not ours to remove: the run goes on
            removed.append(path)
        return removed

    def write(self) -> None:
        if not self.is_controller or self.collect_only:
            return
        try:
            self.written = write_report(self.report_path, self.report())
            self.write_error = None
        except Exception as exc:  # writing the report never crashes the run; the summary says it failed
            self.write_error = f"{type(exc).__name__}: {exc}"
            # The previous run's report must not pass for this run's: remove it (a diag report only).
            if remove_stale_report(self.report_path):
                self.write_error += "; the previous report there was removed"


MAP_FILE_NAME = r"device-map-[A-Za-z0-9_.:-]+?\.json"  # what diag.devicemap.cases.write_map names a map


def stale_map_files(report: Path) -> list[Path]:
    """The corrected device maps a previous diag report at `report` names in its own folder and that still exist.

    Only names matching diag's pattern (`device-map-<case>.json`), cited with the report's folder as their
    folder by a fix (or a warning's fix) of a report with diag's schema: no other file is ever a candidate.
    """
    try:
        previous = load_json(report)  # a regular file only: a FIFO at the report's path never blocks the run
    except (OSError, ValueError):  # InputError is a ValueError
        return []
    if not isinstance(previous, dict) or previous.get("schema") != SCHEMA:
        return []
    folder = report.parent
    cited = re.compile(r"(?<![\w./-])" + re.escape(str(folder) + os.sep) + f"({MAP_FILE_NAME})(?![\\w-])")
    try:
        fixes = [[c.get("fix"), *(w.get("fix") for w in c.get("warnings") or [])] for c in previous["checks"]]
    except (KeyError, TypeError, AttributeError):  # not a report diag wrote: nothing in it is a candidate
        return []
    names = {m[1] for text in _strings(fixes) for m in cited.finditer(text)}
    return [folder / name for name in sorted(names) if (folder / name).is_file()]


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _launch_section() -> dict[str, Any] | None:
    """This rank's place in the launched job for the report; a malformed launcher variable is DIST-008's finding."""
    try:
        info = rank_info(os.environ)
    except LaunchEnvError as exc:
        return {"error": str(exc)}
    return info.as_dict() if info is not None else None


def _outcome(report: pytest.TestReport) -> str:
    if report.passed:
        return "passed"
    if report.skipped:
        return "skipped"
    return "failed" if report.when == "call" else "error"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return last_line(str(longrepr))


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _catalog_fix(code: str) -> dict[str, Any]:
    return {"summary": lookup(code).fix, "details": "", "commands": [], "env": {}, "device_map_file": None,
            "verified": False}  # fmt: skip


def _unexpected_failure(report: pytest.TestReport) -> dict[str, Any]:
    """A failure that did not come from Check.fail is a defect in diag, reported as DIAG-001."""
    return {"code": "DIAG-001", "message": last_line(report.longreprtext), "fix": _catalog_fix("DIAG-001"),
            "references": list(lookup("DIAG-001").references)}  # fmt: skip


STATE = pytest.StashKey[DiagState]()


def state_of(config: pytest.Config) -> DiagState:
    return config.stash[STATE]
