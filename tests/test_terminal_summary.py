"""Every failure and warning reaches the terminal, one line each, the one next step first (issue 11, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

from diag.summary import NEXT_STEP, findings, summary_lines
from diag.twins import PRESETS, build_meta, language_model_layout


def _failure(nodeid, code, summary, subject=None, device_map_file=None):
    return {"nodeid": nodeid, "outcome": "failed", "code": code, "message": f"{code} happened", "subject": subject,
            "fix": {"summary": summary, "device_map_file": device_map_file}, "warnings": []}  # fmt: skip


def _passed(nodeid, *warnings):
    return {"nodeid": nodeid, "outcome": "passed", "code": None, "message": None, "subject": None, "fix": None,
            "warnings": [{"code": c, "message": m, "fix": f} for c, m, f in warnings]}  # fmt: skip


CHECKS = [
    _failure("checks/test_same_device.py::test_twin_runs_with_the_map[cogvlm-17b-auto]", "FWD-004",
             "Use the map diag wrote to reports/device-map-cogvlm-17b-auto-fixed.json.", "model.vision",
             "reports/device-map-cogvlm-17b-auto-fixed.json"),
    _passed("checks/test_devicemap.py::test_device_map_covers_the_model[internvl2-76b-device-map]",
            ("MAP-007", "language_model.model.rotary_emb stays on the CPU",
             "Use the corrected map reports/device-map-internvl2-76b-device-map.json.")),
    _failure("checks/test_devicemap.py::test_model_fits_in_gpu_memory[internvl2-76b-auto]", "MEM-001",
             "Cap each GPU: max_memory={0: '39GiB'}.", "cuda:1"),
    _passed("checks/test_env.py::test_selected_gpus_can_reach_their_peers",
            ("ENV-009", "no peer access between GPUs 0<->2.", "Prefer GPUs linked by NVLink.")),
    _failure("checks/test_devicemap.py::test_device_map_names_only_visible_gpus[rank1-gpus1-internvl2-1b-map]",
             "MAP-004", "Use the corrected map (physical GPU n -> cuda ordinal).", "device_map",
             "reports/device-map-rank1.json"),
    _passed("checks/test_layout.py::test_vlmevalkit_gives_each_process_its_own_gpus",
            ("LAYOUT-003", "3 GPUs for 2 processes", "Select a multiple of the process count.")),
    _failure("checks/test_env.py::test_selected_gpu_is_free[gpu0]", "ENV-006", "Use free GPUs: --gpus 1,2,3.",
             "GPU 0"),
    _passed("checks/test_devicemap.py::test_auto_split_uses_only_visible_gpus[internvl2-76b-auto-split]",
            ("SPLIT-001", "VLMEvalKit from Dec 2024 would address cuda:4", "Update VLMEvalKit.")),
    _failure("checks/test_layout.py::test_one_process_per_model", "LAYOUT-002", "Run one process.", "device_map"),
    {**_passed("checks/test_env.py::test_driver_answers"), "outcome": "skipped", "message": "see ENV-001"},
]  # fmt: skip


def test_failures_come_first_ordered_by_root_cause_then_the_warnings():
    lines = summary_lines({"checks": CHECKS})
    codes = [line.split("[", 1)[1].split("]", 1)[0] for line in lines if "[" in line]
    assert codes == ["ENV-006", "LAYOUT-002", "MAP-004", "MEM-001", "FWD-004",
                     "ENV-009", "LAYOUT-003", "MAP-007", "SPLIT-001"]  # fmt: skip
    assert lines[0] == f"{NEXT_STEP}[ENV-006] GPU 0: Use free GPUs: --gpus 1,2,3."
    assert lines[1] == "then:"
    assert all(line.startswith(("  failed  [", "  warning [")) for line in lines[2:])
    assert [line.split()[0] for line in lines[2:]] == ["failed"] * 4 + ["warning"] * 4


def test_each_line_names_the_case_and_the_corrected_map():
    lines = summary_lines({"checks": CHECKS})
    by_code = {line.split("[", 1)[1].split("]", 1)[0]: line for line in lines if "[" in line}
    # the case of a check run per model case, with the check's own subject beside it
    assert "[MAP-004] rank1-gpus1-internvl2-1b-map (device_map): Use the corrected map" in by_code["MAP-004"]
    assert by_code["MAP-004"].endswith("(corrected map: reports/device-map-rank1.json)")
    assert "[FWD-004] cogvlm-17b-auto (model.vision): Use the map diag wrote to " in by_code["FWD-004"]
    assert by_code["FWD-004"].count("device-map-cogvlm-17b-auto-fixed.json") == 1  # already in the fix: not twice
    # a warning gives what it found and its fix; a check without a case gives its test name
    assert by_code["MAP-007"].endswith(
        "[MAP-007] internvl2-76b-device-map: language_model.model.rotary_emb stays on the CPU; "
        "fix: Use the corrected map reports/device-map-internvl2-76b-device-map.json."
    )
    assert ("[ENV-009] test_selected_gpus_can_reach_their_peers: no peer access between GPUs 0<->2; "
            "fix: Prefer GPUs linked by NVLink.") in by_code["ENV-009"]  # fmt: skip


def test_with_only_warnings_the_next_step_is_the_root_most_warning_and_nothing_gives_no_lines():
    warnings_only = [c for c in CHECKS if c["outcome"] != "failed"]
    lines = summary_lines({"checks": warnings_only})
    assert lines[0].startswith(f"{NEXT_STEP}[ENV-009] ")
    assert len(lines) == 2 + 3
    assert summary_lines({"checks": [_passed("checks/test_env.py::test_a")]}) == []
    assert summary_lines({"schema": "diag-report/1"}) == []


def test_findings_keep_the_run_order_within_one_code():
    checks = [_failure(f"checks/test_devicemap.py::test_fits[rank{r}-gpus{r}-m-auto]", "MEM-002", "Use more GPUs.",
                       f"rank{r}-gpus{r}-m-auto") for r in (2, 0, 1)]  # fmt: skip
    assert [f.subject for f in findings(checks)] == ["rank2-gpus2-m-auto", "rank0-gpus0-m-auto", "rank1-gpus1-m-auto"]


def test_every_warning_of_a_real_run_reaches_the_terminal_with_its_map_file(run_checks, pytester):
    """A mixed node without peer access (ENV-009), three GPUs for two VLMEvalKit processes (LAYOUT-003) and a
    hand-written InternVL map without rotary_emb (MAP-007 with its corrected map), in one run."""
    model = build_meta(PRESETS["internvl2-1b"])
    layout = language_model_layout(model)
    hand = {name: 0 for name in (*layout.vision, layout.embed)}
    hand.update({f"{layout.layers}.{i}": 0 for i in range(layout.num_layers)})
    hand.update({layout.norm: 0, layout.head: 0})
    path = pytester.path / "hand.json"
    path.write_text(json.dumps(hand))
    run = run_checks("--simulate", "2xV100-32GB+2xA100-80GB", "--gpus", "0,1,2", "--eval-kit", "vlmevalkit",
                     "--processes", "2", "--model", "internvl2-1b", f"--device-map=@{path}")  # fmt: skip
    diag_section = run.text.split(" diag ", 1)[1].splitlines()
    warnings = [(c, w) for c in run.report["checks"] for w in c["warnings"]]
    assert {"ENV-009", "LAYOUT-003", "MAP-007"} <= {w["code"] for _, w in warnings}, run.text
    for check, warning in warnings:
        hits = [line for line in diag_section if f"[{warning['code']}] " in line and warning["fix"] in line]
        assert hits, (warning, run.text)
        case = check["nodeid"].rsplit("[", 1)[1].rstrip("]") if check["nodeid"].endswith("]") else None
        assert case is None or any(f"] {case}" in line for line in hits), (case, hits)
    map_lines = [line for line in diag_section if "[MAP-007] " in line]
    assert len(map_lines) == 2  # one per VLMEvalKit process, each with its own corrected map
    for line in map_lines:
        written = line.rsplit("Use the corrected map ", 1)[1].rstrip(".")
        assert json.loads(Path(written).read_text())[layout.rotary] == 0
    first = next(line for line in diag_section if line.startswith(NEXT_STEP))
    assert diag_section.index(first) < min(diag_section.index(line) for line in map_lines)
