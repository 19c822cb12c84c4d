"""diag's benchmark: what the suite costs against the unavoidable floor, and how its parts scale.

    python bench/run.py [--repeat N] [--quick] [--json reports/bench.json] [--only SECTION ...]

Sections (all by default): suite (the whole suite against `import torch, transformers, accelerate`), xdist
(`-n 2` against serial), plan (meta build + `auto` planning per preset), layers (a twin's run against decoder
depth), gpus (a twin's run against virtual GPU count), env (the environment checks against simulated GPU count).

Every figure that has a target is a ratio between cases measured in the same loop: each round runs every case
once, in turn, so a busy minute slows all of them alike. Each case is a fresh process, timed from outside; its
peak RSS is what the kernel reports for it when it is reaped (`os.wait4`, the largest process of its tree).
The page docs/performance.md explains each section and holds the latest table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
CHILD = Path(__file__).resolve().with_name("child.py")
SCHEMA = "diag-bench/1"
SECTIONS = ("suite", "xdist", "plan", "layers", "gpus", "env")
SIMULATE = "8xA100-80GB"
LAYERS = (8, 16, 32, 48, 64, 80)
LAYERS_QUICK = (8, 80)
LAYER_TWIN, LAYER_GPUS = "internvl2-76b", 8
GPUS = (1, 2, 4, 8, 16, 32, 64)
GPUS_QUICK = (1, 4, 64)
GPU_TWIN = "llava-1.5-7b"
ENV_GPUS = (1, 4, 8, 16, 64)
ENV_GPUS_QUICK = (1, 4, 64)
PLAN_GPUS = 8
PLAN_QUICK = ("llava-1.5-7b", "internvl2-76b")
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


def run_case(case: Case) -> Sample:
    """Run the command once; wall time from outside, peak RSS of the child (and its reaped descendants).

    Raises BenchError when the exit code is not one `case.accept` allows, with the tail of its output.
    """
    if case.report is not None:
        case.report.unlink(missing_ok=True)  # a stale report must never stand in for this run's
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(case.argv, cwd=case.cwd, env=child_env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode not in case.accept:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-15:])
        raise BenchError(
            f"{case.name}: exit code {process.returncode} (expected {sorted(case.accept)})\n"
            f"  command: {' '.join(case.argv)}\n{tail}"
        )
    rss_mib = usage.ru_maxrss * 1024 / MIB  # ru_maxrss is in KiB on Linux
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


def pytest_argv(*args: str) -> tuple[str, ...]:
    """A pytest command as the bench runs it: quiet, no cache, hypothesis' plugin off where it is installed."""
    plugins = ("-p", "no:hypothesispytest") if hypothesis_plugin_installed() else ()
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


def suite_cases(report_dir: Path) -> list[Case]:
    floor = Case("floor", (sys.executable, "-c", "import torch, transformers, accelerate"))
    default = Case(
        "suite",
        pytest_argv("checks/", "--simulate", SIMULATE, "--diag-report", str(report_dir / "d.json")),
        accept=frozenset({0, 1}),
        report=report_dir / "d.json",
    )
    big = Case(
        "suite --model internvl2-76b",
        pytest_argv(
            "checks/", "--simulate", SIMULATE, "--model", "internvl2-76b", "--diag-report", str(report_dir / "m.json")
        ),
        accept=frozenset({0, 1}),
        report=report_dir / "m.json",
    )
    return [floor, default, big]


def hypothesis_note() -> list[str]:
    if hypothesis_plugin_installed():
        return [
            "pytest runs with -p no:hypothesispytest: hypothesis' plugin is installed here (diag's test extra) "
            "and imports hypothesis at the end of every run; eval environments do not carry it"
        ]
    return []


def section_suite(repeat: int, report_dir: Path) -> Section:
    cases = suite_cases(report_dir)
    notes = [
        f"suite = pytest checks/ --simulate {SIMULATE} (default twins); floor = python -c 'import torch, "
        "transformers, accelerate'",
        "exit code 1 (a failed check) is timed like 0: on transformers 4.45.2 the internvl2-76b suite fails "
        "FWD-002 by design; any other exit code stops the bench",
        *hypothesis_note(),
    ]
    section, wall, rss = process_section("suite", "Suite against the import floor", cases, repeat, "floor", notes)
    for case in cases[1:]:
        slowest = ", ".join(
            f"{c['nodeid'].split('::')[-1]} {c['median_s']:.2f} s"
            for c in section.data["cases"][case.name]["slowest_checks"][:3]
        )
        section.table += f"\n  note: slowest checks ({case.name}): {slowest}"
    section.figures = {
        "suite_ratio": ratio(wall["suite"], wall["floor"]),
        "suite_76b_ratio": ratio(wall["suite --model internvl2-76b"], wall["floor"]),
        "suite_peak_rss_mib": max(rss["suite"].high, rss["suite --model internvl2-76b"].high),
    }
    return section


def section_xdist(repeat: int, report_dir: Path) -> Section:
    serial = suite_cases(report_dir)[1]
    parallel = dataclasses.replace(serial, name="suite -n 2", argv=(*serial.argv, "-n", "2"))
    cpus = os.cpu_count() or 1
    notes = [
        f"this machine has {cpus} CPU core(s); -n 2 starts two workers that each import torch and transformers "
        "beside the controller, so with fewer free cores than processes it cannot beat serial",
        "peak RSS is the largest single process (controller or one worker), not their sum",
        *hypothesis_note(),
    ]
    section, wall, _ = process_section(
        "xdist", "pytest-xdist against serial", [serial, parallel], repeat, "suite", notes
    )
    section.data["cpu_count"] = cpus
    section.figures = {"xdist_ratio": ratio(wall["suite -n 2"], wall["suite"])}
    return section


def section_env(repeat: int, gpus: Sequence[int], tmp: Path) -> Section:
    (tmp / "test_trivial.py").write_text("def test_trivial():\n    pass\n")
    cases = [Case("baseline", pytest_argv("test_trivial.py"), cwd=tmp)]
    for n in gpus:
        argv = pytest_argv("checks/test_env.py", "--simulate", f"{n}xA100-80GB", "--diag-report", str(tmp / "e.json"))
        cases.append(Case(f"env {n} GPUs", argv, report=tmp / "e.json"))
    notes = [
        "baseline = pytest with the same plugins running one trivial test (diag's plugin stays dormant)",
        *hypothesis_note(),
    ]
    section, wall, _ = process_section(
        "env", "Environment checks against simulated GPU count", cases, repeat, "baseline", notes
    )
    low, high = f"env {min(gpus)} GPUs", f"env {max(gpus)} GPUs"
    if 4 in gpus and 64 in gpus:
        low, high = "env 4 GPUs", "env 64 GPUs"
    base = wall["baseline"].median
    section.figures = {
        "env_gpu_ratio": ratio(wall[high], wall[low]),
        "env_gpu_added_ratio": (wall[high].median - base) / max(wall[low].median - base, 1e-9),
    }
    section.data["compared"] = [low, high]
    return section


def section_plan(repeat: int, presets: Sequence[str]) -> Section:
    cases = [Case(p, (sys.executable, str(CHILD), "plan", p, str(PLAN_GPUS))) for p in presets]
    samples = interleave(cases, repeat)
    rows, data = [], {}
    for preset in presets:
        runs = [child_json(s) for s in samples[preset]]
        if any(r["real_params"] for r in runs):
            raise BenchError(f"{preset}: planning allocated weights ({runs[0]['real_params']} real parameters)")
        build, plan = Stats([r["build_s"] for r in runs]), Stats([r["plan_s"] for r in runs])
        total = Stats([r["build_s"] + r["plan_s"] for r in runs])
        rss = Stats([s.peak_rss_mib for s in samples[preset]])
        rows.append(
            (
                preset,
                round(runs[0]["params_b"], 2),
                build.median,
                plan.median,
                total.median,
                spread(total),
                len(runs[0]["devices"]),
                rss.high,
            )
        )
        data[preset] = {
            "params_b": runs[0]["params_b"],
            "devices": runs[0]["devices"],
            "build_s": build.as_json(),
            "plan_s": plan.as_json(),
            "total_s": total.as_json(),
            "import_s": Stats([r["import_s"] for r in runs]).as_json(),
            "peak_rss_mib": rss.as_json(),
        }
    notes = [
        f"build_meta (full width, meta device) + plan_device_map('auto', {PLAN_GPUS} x 80 GiB + CPU); "
        "each run a fresh process; imports not in the time, but in the peak RSS"
    ]
    headers = ("preset", "params B", "build s", "plan s", "total s", "min-max s", "devices", "peak RSS MiB")
    table = format_table(f"Planning per preset ({PLAN_GPUS} GPUs)", headers, rows, notes)
    return Section("plan", table, {"gpus": PLAN_GPUS, "notes": notes, "presets": data})


def twin_section(
    name: str, title: str, preset: str, points: Sequence[tuple[int, int]], repeat: int, key: str
) -> Section:
    """A twin sweep in one child: warm-up, then `repeat` rounds over the points; `key` is the swept axis."""
    request = json.dumps({"preset": preset, "points": [list(p) for p in points], "repeat": repeat})
    case = Case(name, (sys.executable, str(CHILD), "twins", request))
    sample = interleave([case], 1)[name][0]
    out = child_json(sample)
    rows, data_points = [], []
    for point in out["points"]:
        parts = {part: Stats([s[f"{part}_s"] for s in point["samples"]]) for part in ("build", "dispatch", "run")}
        total = Stats([s["total_s"] for s in point["samples"]])
        rows.append(
            (
                point[key],
                point["layers"] if key == "gpus" else point["gpus"],
                point["devices_used"],
                *(parts[p].median for p in parts),
                total.median,
                spread(total),
            )
        )
        data_points.append(
            {
                **{k: point[k] for k in ("layers", "gpus", "devices_used")},
                "total_s": total.as_json(),
                **{f"{p}_s": parts[p].as_json() for p in parts},
            }
        )
    first, last = data_points[0], data_points[-1]
    if key == "gpus":
        low = next((p for p in data_points if p["gpus"] == 4), first)
        high = next((p for p in data_points if p["gpus"] == 64), last)
    else:
        low, high = first, last
    figure = high["total_s"]["median"] / low["total_s"]["median"]
    other = "layers" if key == "gpus" else "virtual GPUs"
    notes = [
        f"{out['preset']} tiny twin ({out['family']}), forced over the GPUs with forced_map, run_twin with virtual "
        "CUDA devices; medians of warm runs (one warm-up run first: "
        f"{out['warmup_s']:.2f} s), rounds interleave the points",
        f"ratio {high[key]} vs {low[key]} {key}: {figure:.2f}; peak RSS of the sweep process "
        f"{sample.peak_rss_mib:.0f} MiB",
    ]
    headers = (key, other, "devices used", "build s", "dispatch s", "run s", "total s", "min-max s")
    data = {
        "preset": out["preset"],
        "warmup_s": out["warmup_s"],
        "peak_rss_mib": sample.peak_rss_mib,
        "points": data_points,
        "compared": [low[key], high[key]],
        "ratio": figure,
        "notes": notes,
    }
    return Section(name, format_table(title, headers, rows, notes), data, {f"{name}_ratio": figure})


def section_layers(repeat: int, layers: Sequence[int]) -> Section:
    points = [(n, LAYER_GPUS) for n in layers]
    title = f"Twin forward + generate against decoder depth ({LAYER_GPUS} virtual GPUs)"
    return twin_section("layers", title, LAYER_TWIN, points, repeat, "layers")


def section_gpus(repeat: int, gpus: Sequence[int]) -> Section:
    points = [(0, n) for n in gpus]
    title = "Twin forward + generate against virtual GPU count"
    return twin_section("gpus", title, GPU_TWIN, points, repeat, "gpus")


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
    Target("env checks, 64 / 4 GPUs (time above baseline)", "env_gpu_added_ratio", 1.2, informational=True),
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
            }
        )
    return out


def targets_table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in results:
        limit = f"<= {r['limit']:g} {r['unit']}" if r["unit"] != "x" else f"<= {r['limit']:g}"
        value = None if r["value"] is None else (f"{r['value']:.0f} MiB" if r["unit"] == "MiB" else f"{r['value']:.2f}")
        rows.append((r["target"], limit, value, r["verdict"]))
    notes = [
        "'info': no target on this machine (the xdist figure needs more cores than processes; the time-above-"
        "baseline ratio is a stricter view of the env target)"
    ]
    return format_table("Targets", ("target", "limit", "measured", "verdict"), rows, notes)


# ----------------------------------------------------------------------------------------------- main


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=_positive, default=None, help="rounds per section (default 5; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="one round and fewer points: a smoke run")
    parser.add_argument("--json", default=str(REPO / "reports" / "bench.json"), help="where to write the results")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    options = parser.parse_args(argv)
    if options.repeat is None:
        options.repeat = 1 if options.quick else 5
    return options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number of rounds")
    return value


def run_sections(options: argparse.Namespace, tmp: Path) -> list[Section]:
    chosen = [s for s in SECTIONS if options.only is None or s in options.only]
    quick = options.quick
    runners: dict[str, Callable[[], Section]] = {
        "suite": lambda: section_suite(options.repeat, tmp),
        "xdist": lambda: section_xdist(options.repeat, tmp),
        "plan": lambda: section_plan(options.repeat, PLAN_QUICK if quick else _presets()),
        "layers": lambda: section_layers(options.repeat, LAYERS_QUICK if quick else LAYERS),
        "gpus": lambda: section_gpus(options.repeat, GPUS_QUICK if quick else GPUS),
        "env": lambda: section_env(options.repeat, ENV_GPUS_QUICK if quick else ENV_GPUS, tmp),
    }
    sections = []
    for name in chosen:
        before = os.getloadavg()
        started = time.perf_counter()
        print(f"== {name} (load average {before[0]:.2f})", flush=True)
        section = runners[name]()
        section.data["elapsed_s"] = time.perf_counter() - started
        section.data["load_average"] = {"before": list(before), "after": list(os.getloadavg())}
        print(section.table + "\n", flush=True)
        sections.append(section)
    return sections


def _presets() -> list[str]:
    """Every preset, read from a child so the bench process itself never imports torch."""
    code = "import json; from diag.twins import PRESETS; print(json.dumps(list(PRESETS)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=child_env()
    ).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    print(
        f"diag bench: {os.cpu_count()} CPU core(s), load average {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f}, {options.repeat} round(s){' (quick)' if options.quick else ''}",
        flush=True,
    )
    source = source_state()
    dirty = source["uncommitted"]
    print(
        f"source: {(source['commit'] or 'unknown')[:12]}"
        + (f", {len(dirty)} uncommitted file(s) in diag/ checks/" if dirty else "")
    )
    with tempfile.TemporaryDirectory(prefix="diag-bench-") as tmp:
        try:
            sections = run_sections(options, Path(tmp))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 2
    figures = {k: v for s in sections for k, v in s.figures.items()}
    targets = evaluate_targets(figures)
    print(targets_table(targets))
    document = {
        "schema": SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "command": ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)],
        "repeat": options.repeat,
        "quick": options.quick,
        "machine": machine(),
        "source": source,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "hypothesis_plugin_disabled": hypothesis_plugin_installed(),
        "sections": {s.name: s.data for s in sections},
        "figures": figures,
        "targets": targets,
    }
    path = Path(options.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
