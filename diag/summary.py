"""The findings of a report as terminal lines: the one next step first, then the rest.

Both pytest's terminal summary (the `diag` section) and the `python -m diag run` wrapper (before it starts the
eval) print these lines; they read the report's `checks` entries as written in the JSON, so the wrapper can call
`summary_lines(json.load(report_file))`.

The order follows the root cause, so the first line is the one to act on:

1. failures before warnings (a failure stops the eval; a warning is a risk);
2. within each, by area, the cause before its consequences:
   environment (ENV: driver, missing GPU, torch build, busy GPU, …) before the launch across ranks (DIST) before
   the process layout (LAYOUT) before whether the model loads here at all (MODEL) before the device map (MAP,
   SPLIT) before memory (MEM) before what the same-device run found (FWD), and diag's own errors (DIAG) last; an
   unknown area goes after DIAG;
3. within an area by code number (ENV-001, no driver, before ENV-002, a missing GPU, before ENV-006, a busy one),
   then in the order the checks ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

AREA_ORDER = ("ENV", "DIST", "LAYOUT", "MODEL", "KIT", "MAP", "SPLIT", "BACKEND", "MEM", "FWD", "DIAG")
NEXT_STEP = "next step: "


@dataclass(frozen=True)
class Finding:
    """One failure or warning of a report, with what its terminal line shows."""

    kind: str  # "failure" or "warning"
    code: str
    subject: str
    message: str
    fix: str
    device_map_file: str | None = None

    @property
    def rank(self) -> tuple[int, int, int]:
        area, _, number = self.code.partition("-")
        area_rank = AREA_ORDER.index(area) if area in AREA_ORDER else len(AREA_ORDER)
        return (0 if self.kind == "failure" else 1, area_rank, int(number) if number.isdigit() else 0)


def _subject(check: Mapping[str, Any]) -> str:
    """Which GPU or model case: the parameter id of a check run per case (`rank1-gpus1-internvl2-1b-auto`) with
    the check's own subject (`device_map`) beside it; a check run per GPU says just `GPU 0`; an unparametrized
    check without a subject gives its test name."""
    subject = str(check.get("subject") or "")
    name = str(check.get("nodeid", "")).rsplit("::", 1)[-1]
    case = name.rsplit("[", 1)[1][:-1] if name.endswith("]") and "[" in name else ""
    if case and not re.fullmatch(r"gpu\d+|no-gpu", case) and case not in subject:
        return f"{case} ({subject})" if subject else case
    return subject or case or name


def findings(checks: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """The failures and warnings of the report's `checks` entries, most important first (see the module doc)."""
    found: list[Finding] = []
    for check in checks:
        subject = _subject(check)
        fix = check.get("fix") or {}
        if check.get("outcome") in ("failed", "error") and check.get("code"):
            found.append(Finding("failure", str(check["code"]), subject, str(check.get("message") or ""),
                                 str(fix.get("summary") or ""), fix.get("device_map_file")))  # fmt: skip
        for warning in check.get("warnings") or []:
            found.append(Finding("warning", str(warning.get("code")), subject, str(warning.get("message") or ""),
                                 str(warning.get("fix") or ""), warning.get("device_map_file")))  # fmt: skip
    return sorted(found, key=lambda f: f.rank)  # stable: equal ranks keep the order the checks ran in


def finding_line(finding: Finding) -> str:
    """`[MAP-007] internvl2-76b-device-map: <what>; fix: Use the corrected map reports/device-map-….json.`

    A failure's message is already in pytest's own failure output, so its line gives the fix; a warning's
    message is shown nowhere else, so its line gives both. The corrected map file is named when there is one.
    """
    text = f"{finding.message.rstrip('. ')}; fix: {finding.fix}" if finding.kind == "warning" else finding.fix
    if finding.device_map_file and finding.device_map_file not in text:
        text += f" (corrected map: {finding.device_map_file})"
    return f"[{finding.code}] {finding.subject}: {text.strip()}"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The report's findings as lines: `next step: [CODE] …` first, then `failed  [CODE] …` / `warning [CODE] …`.

    `report` is the report as JSON data (only its `checks` list is read). No findings, no lines.
    """
    ordered = findings(report.get("checks") or [])
    if not ordered:
        return []
    lines = [NEXT_STEP + finding_line(ordered[0])]
    if len(ordered) > 1:
        lines.append("then:")
        lines.extend(f"  {'failed ' if f.kind == 'failure' else 'warning'} {finding_line(f)}" for f in ordered[1:])
    return lines


__all__ = ["AREA_ORDER", "NEXT_STEP", "Finding", "finding_line", "findings", "summary_lines"]
