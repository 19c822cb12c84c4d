"""The measuring half of diag's benchmark (bench/run.py holds the sections and the command line).

A case is one command run as a fresh process: timed from outside, its peak RSS taken from the kernel when it is
reaped (`os.wait4`: the largest process of its tree), its exit code checked. Cases are run in interleaved rounds,
so every figure with a target is a ratio between cases measured in the same minute. Targets are the issue's.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2


class BenchError(RuntimeError):
    """A measured command did not run as expected (usage error, internal error, crash): no figure is honest."""


@dataclass(frozen=True)
class Case:
    """One command measured as a whole process; `accept` lists the exit codes that still count as a run."""

    name: str
    argv: tuple[str, ...]
    cwd: Path = REPO
    accept: frozenset[int] = frozenset({0})
    report: Path | None = None  # the diag report the run writes (--diag-report), read after each run


@dataclass(frozen=True)
class Sample:
    wall_s: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    # From the diag report, when the case writes one: summary.duration_s and each check's duration_s.
    session_s: float | None = None
    check_s: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Stats:
    """Median and spread of one case's samples."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def as_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "median": self.median, "min": self.low, "max": self.high}


def child_env() -> dict[str, str]:
    """The bench's environment without what would steer the measured runs: GPU selection, pytest options."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "PYTEST_"))}


# The measured command runs as the grandchild of the bench, spawned by this tiny launcher, which reports the
# command's own peak RSS (with its reaped descendants, e.g. xdist workers) from wait4. Spawned straight from a
# large process (a test run that has imported torch), a child's ru_maxrss would start at the parent's RSS:
# Linux carries the high-water mark of the memory a child leaves at exec into its rusage.
_LAUNCHER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as peak:
    peak.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_case(case: Case) -> Sample:
    """Run the command once; wall time from outside, peak RSS of the child (and its reaped descendants).

    Raises BenchError when the exit code is not one `case.accept` allows, with the tail of its output.
    """
    if case.report is not None:
        case.report.unlink(missing_ok=True)  # a stale report must never stand in for this run's
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "maxrss"
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(peak_file), *case.argv],
                                   cwd=case.cwd, env=child_env(), stdout=out, stderr=err)  # fmt: skip
        process.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        maxrss_kib = int(peak_file.read_text()) if peak_file.is_file() else 0
    if process.returncode not in case.accept:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-15:])
        raise BenchError(
            f"{case.name}: exit code {process.returncode} (expected {sorted(case.accept)})\n"
            f"  command: {' '.join(case.argv)}\n{tail}"
        )
    rss_mib = maxrss_kib * 1024 / MIB  # ru_maxrss is in KiB on Linux
    session_s, check_s = _from_report(case.report)
    return Sample(wall, rss_mib, process.returncode, stdout, session_s, check_s)


def _from_report(path: Path | None) -> tuple[float | None, dict[str, float]]:
    """`summary.duration_s` and each check's `duration_s` from a diag report (schema diag-report/1)."""
    if path is None or not path.is_file():
        return None, {}
    report = json.loads(path.read_text())
    checks = {c["nodeid"]: float(c["duration_s"]) for c in report.get("checks", []) if c.get("duration_s") is not None}
    return float(report["summary"]["duration_s"]), checks


def interleave(cases: Sequence[Case], repeat: int, progress: Callable[[str], None] = print) -> dict[str, list[Sample]]:
    """`repeat` rounds, each running every case once in the given order."""
    samples: dict[str, list[Sample]] = {case.name: [] for case in cases}
    for round_index in range(repeat):
        for case in cases:
            sample = run_case(case)
            samples[case.name].append(sample)
            progress(
                f"  [{round_index + 1}/{repeat}] {case.name}: {sample.wall_s:.2f} s, {sample.peak_rss_mib:.0f} MiB"
            )
    return samples


def child_json(sample: Sample) -> dict[str, Any]:
    """The JSON object a bench/child.py run printed last."""
    lines = sample.stdout.strip().splitlines()
    if not lines:
        raise BenchError("a bench/child.py run printed nothing")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def hypothesis_plugin_installed() -> bool:
    """Whether hypothesis' pytest plugin is registered in this environment (it loads in every pytest run)."""
    return any(ep.name == "hypothesispytest" for ep in importlib.metadata.entry_points(group="pytest11"))


def pytest_argv(*args: str, hypothesis: bool = False) -> tuple[str, ...]:
    """A pytest command as the bench runs it: quiet, no cache, hypothesis' plugin off where it is installed
    (unless `hypothesis`)."""
    plugins = ("-p", "no:hypothesispytest") if hypothesis_plugin_installed() and not hypothesis else ()
    return (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, *args)


def ratio(numerator: Stats, denominator: Stats) -> float:
    return numerator.median / denominator.median


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Round-by-round ratios: each round's two samples were taken in the same minute."""
    return [n / d for n, d in zip(numerator, denominator, strict=True)]


# ----------------------------------------------------------------------------------------------- tables


def format_table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[object]], notes: Sequence[str] = ()
) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned; floats with 2 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [title, line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)]
    out += [f"  note: {n}" for n in notes]
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def spread(stats: Stats) -> str:
    return f"{stats.low:.2f}-{stats.high:.2f}"


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class Section:
    """One section's result: its tables' rows, its JSON, and the figures that targets read."""

    name: str
    table: str
    data: dict[str, Any]
    figures: dict[str, float] = field(default_factory=dict)


def process_section(
    name: str, title: str, cases: Sequence[Case], repeat: int, baseline: str, notes: Sequence[str]
) -> tuple[Section, dict[str, Stats], dict[str, Stats]]:
    """Interleave whole-process cases and tabulate them against `baseline`.

    Cases that write a diag report also get the report's `summary.duration_s` (from diag's pytest_configure to
    the report: collection and the checks; the rest of the wall time is the interpreter, pytest and plugin
    start-up) and their slowest checks.
    """
    samples = interleave(cases, repeat)
    wall = {k: Stats([s.wall_s for s in v]) for k, v in samples.items()}
    rss = {k: Stats([s.peak_rss_mib for s in v]) for k, v in samples.items()}
    rows = []
    data: dict[str, Any] = {"baseline": baseline, "notes": list(notes), "cases": {}}
    for case in cases:
        per_round = paired_ratios(wall[case.name].samples, wall[baseline].samples)
        session = _session(samples[case.name])
        rows.append(
            (
                case.name,
                wall[case.name].median,
                spread(wall[case.name]),
                ratio(wall[case.name], wall[baseline]),
                f"{min(per_round):.2f}-{max(per_round):.2f}",
                None if session is None else session.median,
                round(rss[case.name].high),
            )
        )
        data["cases"][case.name] = {
            "command": list(case.argv),
            "exit_codes": sorted({s.returncode for s in samples[case.name]}),
            "wall_s": wall[case.name].as_json(),
            "peak_rss_mib": rss[case.name].as_json(),
            "ratio_to_baseline": ratio(wall[case.name], wall[baseline]),
            "paired_ratios": per_round,
            "session_s": None if session is None else session.as_json(),
            "checks_total_s": [sum(s.check_s.values()) for s in samples[case.name]] if session else None,
            "slowest_checks": slowest_checks(samples[case.name]),
        }
    headers = ("case", "median s", "min-max s", f"x {baseline}", "x per round", "from configure s", "peak RSS MiB")
    return Section(name, format_table(title, headers, rows, notes), data), wall, rss


def _session(samples: Sequence[Sample]) -> Stats | None:
    values = [s.session_s for s in samples if s.session_s is not None]
    return Stats(values) if values else None


def slowest_checks(samples: Sequence[Sample], count: int = 5) -> list[dict[str, Any]]:
    """The checks with the longest median duration over the rounds, longest first."""
    durations: dict[str, list[float]] = {}
    for sample in samples:
        for nodeid, seconds in sample.check_s.items():
            durations.setdefault(nodeid, []).append(seconds)
    ranked = sorted(durations.items(), key=lambda item: -statistics.median(item[1]))[:count]
    return [{"nodeid": nodeid, "median_s": statistics.median(values)} for nodeid, values in ranked]


def hypothesis_note() -> list[str]:
    if hypothesis_plugin_installed():
        return [
            "pytest runs with -p no:hypothesispytest: hypothesis' plugin is installed here (diag's test extra) "
            "and imports hypothesis at the end of every run; eval environments do not carry it"
        ]
    return []


# ----------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    name: str
    figure: str
    limit: float
    unit: str = "x"
    informational: bool = False


TARGETS = (
    Target("suite (default twins) / import floor", "suite_ratio", 1.5),
    Target("suite --model internvl2-76b / import floor", "suite_76b_ratio", 2.0),
    Target("peak RSS of the suite", "suite_peak_rss_mib", 1536.0, "MiB"),
    Target("twin run, 64 / 4 virtual GPUs", "gpus_ratio", 1.2),
    Target("env checks, 64 / 4 simulated GPUs (whole run)", "env_gpu_ratio", 1.2),
    Target("twin run, 80 / 8 layers", "layers_ratio", 3.0),
    Target("slowest run at the bounds (1,000 GPUs; 100,000 map keys)", "bounds_slowest_s", 30.0, "s"),
    Target("slowest preset's tiny twin over 8 virtual GPUs", "presets_slowest_s", 1.0, "s"),
    Target("presets whose verdict differs with every block run", "presets_verdicts_differ", 0.0, "presets"),
    Target("largest preset: meta build + auto plan", "plan_largest_s", 5.0, "s"),
    Target("largest preset: peak RSS of planning", "plan_largest_rss_mib", 1536.0, "MiB"),
    Target("env checks, seconds added from 4 to 64 GPUs", "env_gpu_added_s", 0.0, "s", informational=True),
    Target("suite -n 2 / serial (needs spare cores)", "xdist_ratio", 1.0, informational=True),
)


def evaluate_targets(figures: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met; targets whose section did not run say so."""
    out = []
    for target in TARGETS:
        value = figures.get(target.figure)
        if value is None:
            verdict = "not measured"
        elif target.informational:
            verdict = "info"
        else:
            verdict = "met" if value <= target.limit else "missed"
        out.append(
            {
                "target": target.name,
                "figure": target.figure,
                "limit": target.limit,
                "unit": target.unit,
                "value": value,
                "verdict": verdict,
                "informational": target.informational,
            }
        )
    return out


def targets_table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in results:
        limit = f"<= {r['limit']:g} {r['unit']}" if r["unit"] != "x" else f"<= {r['limit']:g}"
        if r["unit"] == "s" and r.get("informational"):  # a figure with no target, in seconds
            limit = "-"
        value = None if r["value"] is None else (f"{r['value']:.0f} MiB" if r["unit"] == "MiB" else f"{r['value']:.2f}")
        rows.append((r["target"], limit, value, r["verdict"]))
    notes = [
        "'info': no target on this machine (the xdist figure needs more cores than processes; the seconds the env "
        "checks add from 4 to 64 GPUs stand beside their ratio)"
    ]
    return format_table("Targets", ("target", "limit", "measured", "verdict"), rows, notes)


# ----------------------------------------------------------------------------------------------- provenance


def source_state() -> dict[str, Any]:
    """The commit measured and whether diag/ or checks/ had uncommitted changes (the bench runs the working tree)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "diag", "checks", "conftest.py", "pyproject.toml")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": None if changed is None else changed.splitlines()}


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "accelerate", "pytest", "pytest-xdist", "hypothesis"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "executable": sys.executable,
        "versions": versions,
    }
