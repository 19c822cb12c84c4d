"""A good neighbour (issue 11, item 11): no library noise, readable plan rows, no stale maps, a normal report file
mode, and no report from --collect-only."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

from diag.devicemap.fit import rows_for
from diag.devicemap.plan import GIB, MODULES_WIDTH, device_label, plan_device_map, summarize_modules
from diag.devicemap.validate import check_dict_map
from diag.noise import captured_warnings, describe, from_library
from diag.plugin import plan_table
from diag.report import write_report
from diag.session import stale_map_files
from diag.twins import PRESETS, build_meta, language_model_layout


# -- plan rows ---------------------------------------------------------------------------------------------------
def test_every_numbered_module_list_is_shortened_to_ranges():
    keys = ["model.vision.patch_embedding", *(f"model.vision.transformer.layers.{i}" for i in range(12, 63)),
            "model.layers.30", "model.layers.31.mlp", "model.layers.31.self_attn", "lm_head"]  # fmt: skip
    assert summarize_modules(keys, "model.layers") == (
        "model.vision.patch_embedding, model.vision.transformer.layers 12-62, layers 30-31, lm_head"
    )
    assert summarize_modules(["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2",
                              "model.layers.5", "lm_head"], "model.layers") == (
        "model.embed_tokens, layers 0-2, 5, lm_head"
    )  # fmt: skip
    assert summarize_modules([""], "model.layers") == "(whole model)"


def test_a_long_row_is_capped_and_counts_what_it_leaves_out():
    names = [f"model.vision.block_{i}_with_a_long_name" for i in range(40)]
    text = summarize_modules(names, None, width=120)
    assert len(text) <= 120
    shown = text.split(", ")
    assert shown[-1] == f"+{40 - len(shown) + 1} more"
    assert shown[:-1] == names[: len(shown) - 1]
    assert summarize_modules(names[:2], None, width=120) == ", ".join(names[:2])  # fits: nothing counted


def test_the_cogvlm_plan_rows_name_vision_layers_as_ranges_and_stay_readable():
    spec = PRESETS["cogvlm-17b"]
    model = build_meta(spec).to(torch.bfloat16)
    free = {ordinal: 12 * GIB for ordinal in range(4)}
    device_map = plan_device_map(model, "auto", {**free, "cpu": 2**40})
    vision_devices = {device_label(v) for k, v in device_map.items() if k.startswith("model.vision.transformer.")}
    assert len(vision_devices) >= 1 and any(k.startswith("model.vision.transformer.layers.") for k in device_map)
    rows = [row.as_dict() for row in rows_for(model, spec, device_map, free, {o: o for o in free})]
    modules = " | ".join(row["modules"] for row in rows)
    assert "model.vision.transformer.layers " in modules  # a range, e.g. `model.vision.transformer.layers 12-62`
    assert "model.vision.transformer.layers." not in modules  # no single layer listed by its full name
    assert language_model_layout(model).layers + "." not in modules
    assert all(len(row["modules"]) <= MODULES_WIDTH for row in rows)
    assert all(len(line) <= 60 + MODULES_WIDTH for line in plan_table(rows))


# -- the libraries' warnings -------------------------------------------------------------------------------------
class _ParameterAtTop(torch.nn.Module):
    """A model with a top-level parameter (CogVLM's `model.vision.boi`): a map key that is no submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.boi = torch.nn.Parameter(torch.zeros(4))
        self.proj = torch.nn.Linear(4, 4)


def test_checking_a_map_with_a_parameter_key_raises_no_library_warning():
    model = _ParameterAtTop()
    device_map = {"boi": 0, "proj": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        report = check_dict_map(model, device_map, 1, [0])
    assert report.failures == [] and report.warnings == []  # a parameter key is fine: diag has nothing to say


def test_a_warning_from_inside_accelerate_is_recognised_as_the_librarys():
    import accelerate.utils.modeling as modeling

    with captured_warnings() as caught:
        warnings.warn_explicit("keys do not match", UserWarning, modeling.__file__, 1627)
        warnings.warn("the caller's own", UserWarning, stacklevel=1)
    assert [from_library(w) for w in caught] == [True, False]
    assert describe(caught[0]) == "UserWarning: keys do not match (accelerate/utils/modeling.py:1627)"


CHECKS_WITH_WARNINGS = """
import warnings

import accelerate.utils.modeling as modeling
import pytest

pytestmark = pytest.mark.diag


@pytest.fixture
def planned():
    warnings.warn_explicit("a simulated device is not available", UserWarning, modeling.__file__, 10)


def test_plans(planned):
    warnings.warn_explicit("keys do not match any submodules", UserWarning, modeling.__file__, 1627)
    warnings.warn("the check's own warning", UserWarning)


def test_not_diags():
    pass
"""


def test_library_warnings_inside_a_check_go_to_its_report_entry_not_the_warnings_summary(pytester):
    """accelerate warns from its own files during diag's planning and twin dispatch (a warn_explicit with
    accelerate's file is what `warnings.warn` inside accelerate produces)."""
    pytester.makepyfile(test_checks=CHECKS_WITH_WARNINGS)
    report = pytester.path / "r.json"
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:cacheprovider", "--simulate", "1xA100-80GB",
                                "--diag-report", str(report), "-W", "error::DeprecationWarning")  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "UserWarning: the check's own warning" in out  # not the libraries': pytest shows it as always
    assert "not available" not in out and "keys do not match" not in out
    entry = next(c for c in json.loads(report.read_text())["checks"] if c["nodeid"].endswith("test_plans"))
    assert entry["data"]["library_warnings"] == [
        "UserWarning: a simulated device is not available (accelerate/utils/modeling.py:10)",
        "UserWarning: keys do not match any submodules (accelerate/utils/modeling.py:1627)",
    ]


def test_library_warnings_outside_diags_checks_are_left_alone(pytester):
    pytester.makepyfile(test_other=CHECKS_WITH_WARNINGS.replace("pytestmark = pytest.mark.diag", ""))
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:cacheprovider", "--simulate", "1xA100-80GB",
                                "--diag-report", str(pytester.path / "r.json"))  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "UserWarning: keys do not match any submodules" in out
    assert "UserWarning: a simulated device is not available" in out


# -- stale corrected maps ----------------------------------------------------------------------------------------
def _previous_report(folder: Path) -> Path:
    """A report of an earlier run citing two maps it wrote beside it, and files that are not its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("device-map-a-auto.json", "device-map-b-device-map.json", "device-map-mine.json",
                 "device-map-elsewhere.json", "my-device-map-c.json", "other.json"):  # fmt: skip
        (folder / name).write_text("{}")
    checks = [
        {"nodeid": "x::test_fwd[a-auto]", "outcome": "failed", "code": "FWD-004", "message": "m", "warnings": [],
         "fix": {"summary": f"Use the map diag wrote to {folder}/device-map-a-auto.json.",
                 "device_map_file": f"{folder}/device-map-a-auto.json"}},
        {"nodeid": "x::test_cover[b-device-map]", "outcome": "passed", "code": None, "fix": None,
         "message": f"read {folder}/device-map-mine.json",  # the user's map, cited outside a fix
         "warnings": [{"code": "MAP-007", "message": "m",
                       "fix": f"Use the corrected map {folder}/device-map-b-device-map.json."}]},
        {"nodeid": "x::test_other", "outcome": "failed", "code": "MAP-004", "message": "m", "warnings": [],
         "fix": {"summary": f"See /elsewhere{folder}/device-map-elsewhere.json and {folder}/my-device-map-c.json",
                 "device_map_file": None}},
    ]  # fmt: skip
    report = folder / "diag-report.json"
    report.write_text(json.dumps({"schema": "diag-report/1", "checks": checks}))
    return report


def test_only_the_maps_a_previous_report_wrote_beside_it_are_stale(tmp_path):
    report = _previous_report(tmp_path / "reports")
    assert [p.name for p in stale_map_files(report)] == ["device-map-a-auto.json", "device-map-b-device-map.json"]
    (tmp_path / "reports" / "device-map-a-auto.json").unlink()
    assert [p.name for p in stale_map_files(report)] == ["device-map-b-device-map.json"]  # only what still exists
    report.write_text(json.dumps({"schema": "other/1", "checks": json.loads(report.read_text())["checks"]}))
    assert stale_map_files(report) == []  # not a diag report
    report.write_text("{not json")
    assert stale_map_files(report) == []
    assert stale_map_files(tmp_path / "missing.json") == []


def _run_once(pytester, report: Path, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_checks="import pytest\n\npytestmark = pytest.mark.diag\n\ndef test_a():\n    pass\n")
    return pytester.runpytest("-p", "diag.plugin", "-p", "no:cacheprovider", "--simulate", "1xA100-80GB",
                              "--diag-report", str(report), *args)  # fmt: skip


def test_a_run_removes_the_previous_runs_maps_and_nothing_else(pytester):
    report = _previous_report(pytester.path / "reports")
    _run_once(pytester, report).assert_outcomes(passed=1)
    assert sorted(p.name for p in report.parent.iterdir()) == [
        "device-map-elsewhere.json",
        "device-map-mine.json",
        "diag-report.json",
        "my-device-map-c.json",
        "other.json",
    ]


def test_a_map_passed_back_to_the_run_is_kept(pytester):
    report = _previous_report(pytester.path / "reports")
    given = report.parent / "device-map-a-auto.json"
    _run_once(pytester, report, f"--device-map={given}").assert_outcomes(passed=1)
    assert given.exists() and not (report.parent / "device-map-b-device-map.json").exists()


def test_under_a_launcher_the_ranks_leave_the_shared_folder_alone(pytester, monkeypatch):
    report = _previous_report(pytester.path / "reports")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    _run_once(pytester, report)
    assert (report.parent / "device-map-a-auto.json").exists()
    assert (report.parent / "device-map-b-device-map.json").exists()


# -- the report file -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_report_gets_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = write_report(tmp_path / "reports" / "r.json", {"schema": "diag-report/1"})
        write_report(path, {"schema": "diag-report/1", "n": 2})  # replacing keeps it
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert json.loads(path.read_text()) == {"schema": "diag-report/1", "n": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


@pytest.mark.parametrize("option", ["--collect-only", "--co"])
def test_collect_only_writes_no_report(pytester, option):
    report = _previous_report(pytester.path / "reports")
    before = report.read_text()
    result = _run_once(pytester, report, option)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_a*", "diag report: not written (--collect-only: no check ran)"])
    assert report.read_text() == before  # the previous run's report stays, and so do its maps
    assert (report.parent / "device-map-a-auto.json").exists()
    fresh = pytester.path / "fresh" / "r.json"
    _run_once(pytester, fresh, option)
    assert not fresh.parent.exists()
