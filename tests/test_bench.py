"""The benchmark harness (bench/run.py): its measuring, its verdicts and the shape of its table and JSON.

These tests run tiny commands, not the suite: timings belong to the bench, never to an assertion here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


# run.py imports its sibling as `harness` (bench/ is the script's folder on sys.path): register it by that name.
harness = _load("harness", "harness")
run = _load("run", "diag_bench_run")
child = _load("child", "diag_bench_child")


def _python(code: str, name: str = "case", accept: frozenset[int] = frozenset({0})) -> object:
    return harness.Case(name, (sys.executable, "-c", code), accept=accept)


def test_peak_rss_is_the_child_s_own() -> None:
    # The parent stays small; a child that touches 300 MiB must report at least that, one that does not, far less.
    big = harness.run_case(_python("b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"))
    ballast = bytearray(300 * 1024 * 1024)  # a parent as large as a test run with torch imported
    ballast[::4096] = b"x" * len(ballast[::4096])
    small = harness.run_case(_python("pass"))
    del ballast
    assert big.peak_rss_mib >= 300
    assert small.peak_rss_mib < 100
    assert big.returncode == small.returncode == 0
    assert big.wall_s > 0


def test_an_accepted_failure_is_timed_and_any_other_exit_code_stops_the_bench() -> None:
    failed_check = harness.run_case(_python("raise SystemExit(1)", accept=frozenset({0, 1})))
    assert failed_check.returncode == 1
    with pytest.raises(harness.BenchError, match=r"(?s)^usage: exit code 4 \(expected \[0, 1\]\)\n.*\nno such option$"):
        harness.run_case(_python("import sys; print('no such option'); sys.exit(4)", "usage", frozenset({0, 1})))


def test_rounds_interleave_every_case() -> None:
    order: list[str] = []
    cases = [_python("pass", "a"), _python("pass", "b")]
    samples = harness.interleave(cases, 3, progress=lambda line: order.append(line.split("]")[1].split(":")[0].strip()))
    assert order == ["a", "b"] * 3
    assert [len(v) for v in samples.values()] == [3, 3]


def test_a_process_section_tabulates_ratios_to_its_baseline() -> None:
    cases = [_python("pass", "base"), _python("import json", "other")]
    section, wall, rss = harness.process_section("demo", "Demo", cases, 2, "base", ["a note"])
    assert section.table.splitlines()[0] == "Demo"
    assert "note: a note" in section.table
    other = section.data["cases"]["other"]
    assert other["ratio_to_baseline"] == pytest.approx(wall["other"].median / wall["base"].median)
    assert len(other["wall_s"]["samples"]) == len(other["paired_ratios"]) == 2
    assert section.data["cases"]["base"]["ratio_to_baseline"] == 1.0
    assert other["peak_rss_mib"]["max"] == rss["other"].high
    json.dumps(section.data)  # the section's data must be JSON as it stands


@pytest.mark.parametrize(
    ("value", "verdict"), [(1.2, "met"), (1.5, "met"), (1.51, "missed"), (None, "not measured")], ids=str
)
def test_targets_are_judged_against_their_limits(value: float | None, verdict: str) -> None:
    figures = {} if value is None else {"suite_ratio": value}
    result = {r["figure"]: r for r in harness.evaluate_targets(figures)}
    assert result["suite_ratio"]["verdict"] == verdict
    assert result["layers_ratio"]["verdict"] == "not measured"


def test_informational_figures_get_no_verdict_and_rss_is_judged_in_mib() -> None:
    result = {r["figure"]: r for r in harness.evaluate_targets({"xdist_ratio": 9.0, "suite_peak_rss_mib": 1600.0})}
    assert result["xdist_ratio"]["verdict"] == "info"
    assert result["suite_peak_rss_mib"]["verdict"] == "missed"
    table = harness.targets_table(list(result.values()))
    assert "1600 MiB" in table and "<= 1536 MiB" in table


def test_pytest_commands_turn_hypothesis_off_only_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "hypothesis_plugin_installed", lambda: True)
    assert "no:hypothesispytest" in harness.pytest_argv("checks/")
    assert "no:hypothesispytest" not in harness.pytest_argv("checks/", hypothesis=True)
    assert harness.hypothesis_note()
    monkeypatch.setattr(harness, "hypothesis_plugin_installed", lambda: False)
    assert "no:hypothesispytest" not in harness.pytest_argv("checks/")
    assert harness.hypothesis_note() == []


@pytest.mark.parametrize("bad", ["0", "-2", "three"])
def test_a_bad_repeat_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--repeat", bad])
    assert exit_info.value.code == 2
    assert f"{bad!r}: expected a positive whole number" in capsys.readouterr().err


def test_quick_means_one_round_unless_told() -> None:
    assert run.parse_args(["--quick"]).repeat == 1
    assert run.parse_args(["--quick", "--repeat", "3"]).repeat == 3
    assert run.parse_args([]).repeat == 5


def test_main_writes_the_json_and_prints_the_targets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_env(repeat: int, gpus: object, tmp: Path) -> object:
        return harness.Section("env", "Env table", {"points": [1, 64]}, {"env_gpu_ratio": 1.3, "env_gpu_added_s": 0.4})

    monkeypatch.setattr(run, "section_env", fake_env)
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--only", "env", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["schema"] == "diag-bench/1"
    assert list(document["sections"]) == ["env"]
    assert set(document["sections"]["env"]["load_average"]) == {"before", "after"}
    verdicts = {t["figure"]: t["verdict"] for t in document["targets"]}
    assert verdicts["env_gpu_ratio"] == "missed" and verdicts["suite_ratio"] == "not measured"
    printed = capsys.readouterr().out
    assert "Env table" in printed and "Targets" in printed and "missed" in printed


def test_a_failing_section_ends_the_bench_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(repeat: int, gpus: object, tmp: Path) -> object:
        raise harness.BenchError("env 64 GPUs: exit code 3")

    monkeypatch.setattr(run, "section_env", broken)
    assert run.main(["--only", "env", "--json", str(tmp_path / "b.json")]) == 2
    assert "exit code 3" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(("preset", "layers"), [("internvl2-76b", 8), ("llava-1.5-7b", 48)])
def test_the_layer_sweep_changes_the_twin_s_depth_and_nothing_else(preset: str, layers: int) -> None:
    from diag.twins import PRESETS, build_meta, language_model_layout

    base = PRESETS[preset]
    spec = child.with_layers(base, layers)
    assert language_model_layout(build_meta(spec)).num_layers == layers
    assert spec.family == base.family
    assert base.config == PRESETS[preset].config  # the preset itself is untouched
    assert language_model_layout(build_meta(base)).num_layers != layers


def test_a_case_s_diag_report_is_read_after_each_run_and_never_a_stale_one(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    content = {"summary": {"duration_s": 2.5}, "checks": [{"nodeid": "checks/a.py::t", "duration_s": 1.25}]}
    writes = f"import json, sys; open(sys.argv[1], 'w').write(json.dumps({content!r}))"
    case = harness.Case("writes", (sys.executable, "-c", writes, str(report)), report=report)
    sample = harness.run_case(case)
    assert sample.session_s == 2.5 and sample.check_s == {"checks/a.py::t": 1.25}
    assert harness.slowest_checks([sample, sample]) == [{"nodeid": "checks/a.py::t", "median_s": 1.25}]
    silent = harness.run_case(harness.Case("silent", (sys.executable, "-c", "pass"), report=report))
    assert silent.session_s is None and silent.check_s == {}
