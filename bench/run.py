"""diag's benchmark: what the suite costs against the unavoidable floor, and how its parts scale.

    python bench/run.py [--repeat N] [--quick] [--json reports/bench.json] [--only SECTION ...]

Sections (all by default): suite (the whole suite against `import torch, transformers, accelerate`), xdist
(`-n 2` against serial), plan (meta build + `auto` planning per preset), layers (a twin's run against decoder
depth), gpus (a twin's run against virtual GPU count), env (the environment checks against simulated GPU count),
bounds (a replayed 1,000-GPU topology and a 100,000-key device map against a trivial pytest run).

Every figure that has a target is a ratio between cases measured in the same loop: each round runs every case
once, in turn, so a busy minute slows all of them alike. Each case is a fresh process, timed from outside; its
peak RSS is what the kernel reports for it when it is reaped (`os.wait4`, the largest process of its tree).
The page docs/performance.md explains each section and holds the latest table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import (  # bench/ is the script's folder, so it is on sys.path
    REPO,
    BenchError,
    Case,
    Section,
    Stats,
    child_env,
    child_json,
    evaluate_targets,
    format_table,
    hypothesis_note,
    hypothesis_plugin_installed,
    interleave,
    machine,
    process_section,
    pytest_argv,
    ratio,
    source_state,
    spread,
    targets_table,
)

CHILD = Path(__file__).resolve().with_name("child.py")
SCHEMA = "diag-bench/1"
SECTIONS = ("suite", "xdist", "plan", "layers", "gpus", "presets", "env", "bounds")
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
PRESET_GPUS = 8
PRESETS_QUICK = ("llava-1.5-7b", "qwen2-vl-7b", "qwen3-vl-235b-a22b")
BOUNDS_GPUS = 1000  # under the 1,024-GPU cap a replayed topology may get
BOUNDS_KEYS = 100_000


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


def section_suite(repeat: int, report_dir: Path) -> Section:
    cases = suite_cases(report_dir)
    notes = [
        f"suite = pytest checks/ --simulate {SIMULATE} (default twins); floor = python -c 'import torch, "
        "transformers, accelerate'",
        "exit code 1 (a failed check) is timed like 0: on transformers 4.45.2 the internvl2-76b suite fails "
        "FWD-002 by design; any other exit code stops the bench",
        "from configure s = the report's summary.duration_s, counted from diag's pytest_configure; --model is "
        "resolved while options are parsed, which imports torch and transformers before that, so this column "
        "does not compare the two suite rows",
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
    if hypothesis_plugin_installed():  # what the bench leaves out, measured: the same baseline with the plugin on
        cases.append(Case("baseline, hypothesis plugin on", pytest_argv("test_trivial.py", hypothesis=True), cwd=tmp))
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
    section.figures = {
        "env_gpu_ratio": ratio(wall[high], wall[low]),
        # What 60 more GPUs add, in seconds: a ratio of the times above the baseline divides by noise when the
        # smaller node costs next to nothing.
        "env_gpu_added_s": wall[high].median - wall[low].median,
    }
    section.data["compared"] = [low, high]
    return section


def section_bounds(repeat: int, tmp: Path) -> Section:
    """Inputs at the stated bounds, replayed from files the bench writes (bench/child.py bounds-files)."""
    argv = (sys.executable, str(CHILD), "bounds-files", str(tmp), str(BOUNDS_GPUS), str(BOUNDS_KEYS))
    made = child_json(interleave([Case("bounds-files", argv)], 1)["bounds-files"][0])
    (tmp / "test_trivial.py").write_text("def test_trivial():\n    pass\n")
    report = tmp / "b.json"
    map_args = ("checks/test_devicemap.py", "--simulate", SIMULATE, "--model", "llava-1.5-7b")
    cases = [
        Case("baseline", pytest_argv("test_trivial.py"), cwd=tmp),
        Case(
            f"env, {BOUNDS_GPUS} GPUs replayed",
            pytest_argv("checks/test_env.py", "--topology", made["topology"], "--diag-report", str(report)),
            accept=frozenset({0, 1}),
            report=report,
        ),
        Case(
            f"map, {BOUNDS_KEYS} keys",
            pytest_argv(*map_args, "--device-map", f"@{made['map']}", "--diag-report", str(report)),
            accept=frozenset({0, 1}),
            report=report,
        ),
    ]
    notes = [
        f"topology: {BOUNDS_GPUS} GPUs in NVLink islands of 8, all {made['p2p_pairs']} pairs listed in p2p "
        f"({made['topology_bytes'] / 2**20:.1f} MiB), every GPU selected: the peer-access check reads each pair once",
        f"map: every top-level module of llava-1.5-7b on cuda:0 plus keys no module has, {made['map_keys']} in all "
        f"({made['map_bytes'] / 2**20:.1f} MiB): MAP-005 suggests a spelling for the first 20 and counts the rest",
        "exit code 1 (a failed check) is timed like 0: the padded map is wrong on purpose",
        *hypothesis_note(),
    ]
    section, wall, _ = process_section("bounds", "Inputs at the bounds", cases, repeat, "baseline", notes)
    section.data["inputs"] = made
    section.figures = {"bounds_slowest_s": max(wall[c.name].median for c in cases[1:])}
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
                round(rss.high),
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
        "each run a fresh process; imports not in the time, but in the peak RSS; presets this stack cannot build "
        "(config-only, or a class the installed transformers lacks) are not planned"
    ]
    headers = ("preset", "params B", "build s", "plan s", "total s", "min-max s", "devices", "peak RSS MiB")
    table = format_table(f"Planning per preset ({PLAN_GPUS} GPUs)", headers, rows, notes)
    section = Section("plan", table, {"gpus": PLAN_GPUS, "notes": notes, "presets": data})
    largest = max(presets, key=lambda p: data[p]["params_b"])  # the largest MoE preset when every preset runs
    section.figures = {
        "plan_largest_s": data[largest]["total_s"]["median"],
        "plan_largest_rss_mib": data[largest]["peak_rss_mib"]["max"],
    }
    return section


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
        repeats = Stats([s["repeats_total_s"] for s in point["samples"]])
        rows.append(
            (
                point[key],
                point["layers"] if key == "gpus" else point["gpus"],
                point["devices_used"],
                *(parts[p].median for p in parts),
                total.median,
                spread(total),
                repeats.median,
            )
        )
        data_points.append(
            {
                **{k: point[k] for k in ("layers", "gpus", "devices_used")},
                "total_s": total.as_json(),
                "repeats_total_s": repeats.as_json(),
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
        "CUDA devices and every block run (run_twin(every_block=True)), which the ratio compares; medians of warm "
        f"runs (one warm-up run first: {out['warmup_s']:.2f} s), rounds interleave the points",
        "checks s: the same point as the check runs it (repeated blocks passed through; more GPUs mean more "
        "device boundaries, so more blocks run)",
        f"ratio {high[key]} vs {low[key]} {key}: {figure:.2f}; peak RSS of the sweep process "
        f"{sample.peak_rss_mib:.0f} MiB",
    ]
    headers = (key, other, "devices used", "build s", "dispatch s", "run s", "total s", "min-max s", "checks s")
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


def section_presets(repeat: int, presets: Sequence[str]) -> Section:
    """Every preset's tiny twin over 8 virtual GPUs, every input set of its family, in one child process."""
    request = json.dumps({"presets": list(presets), "gpus": PRESET_GPUS, "repeat": repeat})
    case = Case("presets", (sys.executable, str(CHILD), "preset-twins", request))
    sample = interleave([case], 1)["presets"][0]
    out = child_json(sample)
    rows, data = [], {}
    for name, seconds in out["samples"].items():
        stats = Stats(seconds)
        run_part = Stats([p.get("run", 0.0) for p in out["parts"][name]])
        every = out["every_block"][name]
        rows.append((name, out["families"][name], stats.median, spread(stats), run_part.median,
                     out["repeats_skipped"][name], every["seconds"], "yes" if every["same_verdict"] else "NO",
                     "yes" if stats.median < 1.0 else "NO"))  # fmt: skip
        data[name] = {"family": out["families"][name], "total_s": stats.as_json(), "run_s": run_part.as_json(),
                      "repeats_skipped": out["repeats_skipped"][name], "every_block": every}  # fmt: skip
    same = sum(1 for e in out["every_block"].values() if e["same_verdict"])
    notes = [
        f"build_tiny + dispatch + forward and 2-token generate on every input set (image; video for Qwen-VL), "
        f"forced over {PRESET_GPUS} virtual GPUs with forced_map; medians of {repeat} warm runs; peak RSS of the "
        f"process {sample.peak_rss_mib:.0f} MiB",
        "run s: forward + generate alone; skipped: blocks passed through as repeats (every forward of the run); "
        "every-block s: one run with every block run (run_twin(every_block=True)); same verdict: that run's stage, "
        f"op, devices, module and error equal the default run's ({same} of {len(out['every_block'])})",
        *(f"{name}: not run on this stack ({why})" for name, why in out["unavailable"].items()),
        *(f"{name}: the forced map fails (timed to the failure) at {why}" for name, why in out["failed"].items()),
    ]
    headers = ("preset", "family", "total s", "min-max s", "run s", "skipped", "every-block s", "same verdict", "< 1 s")
    table = format_table(f"Tiny twins of every preset ({PRESET_GPUS} virtual GPUs)", headers, rows, notes)
    section = Section("presets", table, {"gpus": PRESET_GPUS, "presets": data, "unavailable": out["unavailable"],
                                      "failed": out["failed"],
                                      "peak_rss_mib": sample.peak_rss_mib, "notes": notes})  # fmt: skip
    if data:
        section.figures = {
            "presets_slowest_s": max(d["total_s"]["median"] for d in data.values()),
            "presets_verdicts_differ": float(len(data) - same),
        }
    return section


def section_layers(repeat: int, layers: Sequence[int]) -> Section:
    points = [(n, LAYER_GPUS) for n in layers]
    title = f"Twin forward + generate against decoder depth ({LAYER_GPUS} virtual GPUs)"
    return twin_section("layers", title, LAYER_TWIN, points, repeat, "layers")


def section_gpus(repeat: int, gpus: Sequence[int]) -> Section:
    points = [(0, n) for n in gpus]
    title = "Twin forward + generate against virtual GPU count"
    return twin_section("gpus", title, GPU_TWIN, points, repeat, "gpus")


# ----------------------------------------------------------------------------------------------- main


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
    parser.add_argument("--presets", nargs="+", metavar="PRESET", help="the plan and presets sections: only these")
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
        "plan": lambda: section_plan(
            options.repeat, options.presets or (PLAN_QUICK if quick else _presets(buildable=True))
        ),
        "layers": lambda: section_layers(options.repeat, LAYERS_QUICK if quick else LAYERS),
        "gpus": lambda: section_gpus(options.repeat, GPUS_QUICK if quick else GPUS),
        "presets": lambda: section_presets(options.repeat, options.presets or (PRESETS_QUICK if quick else _presets())),
        "env": lambda: section_env(options.repeat, ENV_GPUS_QUICK if quick else ENV_GPUS, tmp),
        "bounds": lambda: section_bounds(options.repeat, tmp),
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


def _presets(buildable: bool = False) -> list[str]:
    """Every preset (or those the installed transformers can build: not the config-only ones, nor those whose
    class it lacks), read from a child so the bench process itself never imports torch."""
    code = (
        "import json; from diag.twins import PRESETS; from diag.twins.families import family_named; "
        f"print(json.dumps([n for n, s in PRESETS.items() if not {buildable} "
        "or family_named(s.family).unavailable(s.config) is None]))"
    )
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
