"""`python -m diag merge`: per-rank reports of mixed outcomes joined into one fleet report, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from diag.__main__ import main
from diag.fleet import MAX_WORLD_SIZE, FleetError, load_report, merge
from diag.report import build_report, write_report
from diag.topology.records import CudaDevice, CudaView, Topology
from diag.topology.selection import resolve_selection
from diag.topology.simulated import simulated_node
from tests.conftest import REPO

FLEET_SCHEMA = json.loads((REPO / "diag" / "schema" / "diag-fleet-1.json").read_text())


def _check(name: str, outcome: str = "passed", code: str | None = None, subject: str | None = None) -> dict[str, Any]:
    failed = outcome in ("failed", "error")
    return {"nodeid": f"checks/test_x.py::{name}", "outcome": outcome, "duration_s": 0.1, "code": code,
            "message": f"{name} says {code}" if failed else None, "subject": subject,
            "fix": {"summary": f"fix {code}", "details": "", "commands": [], "env": {}, "device_map_file": None,
                    "verified": False} if failed else None,
            "references": [], "warnings": [], "data": {}}  # fmt: skip


def _rank_report(host: str, rank: int, local_rank: int, world: int, checks: list[dict[str, Any]]) -> dict[str, Any]:
    node = simulated_node("2xA100-80GB", hostname=host)
    cuda = CudaView("2.13.0", "12.4", tuple(CudaDevice(i, g.uuid, g.name, g.memory_total_mib) for i, g in
                                            enumerate(node.gpus)), simulated=True)  # fmt: skip
    topology = Topology(node, cuda, resolve_selection(node, None, {}))
    launch = {"launcher": "torchrun", "rank": rank, "world_size": world, "local_rank": local_rank,
              "local_world_size": 2, "node_rank": rank // 2, "master_addr": "node0", "master_port": 29500,
              "agent_store": True}  # fmt: skip
    return build_report(command=["pytest", "checks/"], topology=topology, checks=checks, duration_s=1.0, environ={},
                        host=host, launch=launch)  # fmt: skip


@pytest.fixture
def mixed(tmp_path: Path) -> list[Path]:
    """Rank 0 passes; rank 1 waited for rank 2 (DIST-001) and its GPU 1 is busy (ENV-006); rank 3 waited too;
    rank 2 never wrote a report."""
    reports = {
        "r0.json": _rank_report("node0", 0, 0, 4, [_check("test_a"), _check("test_gpu_free[gpu0]")]),
        "r1.json": _rank_report("node0", 1, 1, 4, [_check("test_a", "failed", "DIST-001", "rank 2"),
                                                   _check("test_gpu_free[gpu1]", "failed", "ENV-006", "GPU 1")]),
        "r3.json": _rank_report("node1", 3, 1, 4, [_check("test_a", "failed", "DIST-001", "rank 2"),
                                                   _check("test_b", "skipped")]),
    }  # fmt: skip
    for name, report in reports.items():
        write_report(tmp_path / name, report)
    return [tmp_path / name for name in reports]


def test_mixed_outcomes_merge_into_nodes_gpus_and_causes(mixed, tmp_path, capsys):
    assert main(["merge", *map(str, mixed), "-o", str(tmp_path / "fleet.json")]) == 1
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    jsonschema.validate(fleet, FLEET_SCHEMA)
    assert fleet["summary"] == {"passed": 2, "failed": 3, "skipped": 1, "errors": 0, "reports": 3, "nodes": 2,
                                     "world_sizes": [4], "missing_ranks": [2]}  # fmt: skip
    assert [(f["code"], f["ranks"], len(f["places"])) for f in fleet["failures"]] == [
        ("DIST-001", [1, 3], 2),
        ("ENV-006", [1], 1),
    ]
    assert fleet["failures"][0]["title"] == "A rank did not answer the collective"
    node0, node1 = fleet["nodes"]
    assert (node0["host"], node0["ranks"], node1["host"], node1["ranks"]) == ("node0", [0, 1], "node1", [3])
    assert [(g["nvml_index"], g["ranks"], [f["code"] for f in g["failures"]]) for g in node0["gpus"]] == [
        (0, [0], []),
        (1, [1], ["ENV-006"]),
    ]
    assert [(g["nvml_index"], g["ranks"]) for g in node1["gpus"]] == [(0, []), (1, [3])]
    assert {(c["host"], c["rank"]) for c in fleet["checks"]} == {("node0", 0), ("node0", 1), ("node1", 3)}
    out = capsys.readouterr().out
    assert "fleet: 3 reports from 2 node(s); 3 failed and 0 errored checks on 2 rank(s)" in out
    assert "no report from rank(s) 2 of 4" in out
    assert "DIST-001 A rank did not answer the collective (2 on rank(s) 1, 3)" in out
    assert "  node1 rank 3: test_a says DIST-001" in out
    assert f"fleet report: {tmp_path / 'fleet.json'}" in out


def test_all_ranks_passing_exit_zero(tmp_path, capsys):
    paths = []
    for rank in (0, 1):
        paths.append(str(write_report(tmp_path / f"r{rank}.json", _rank_report("n", rank, rank, 2, [_check("t")]))))
    assert main(["merge", *paths, "-o", str(tmp_path / "fleet.json")]) == 0
    assert "GPUs:" in capsys.readouterr().out


def test_a_report_without_a_launcher_merges_as_its_host(tmp_path):
    report = build_report(command=["pytest"], topology=None, checks=[_check("t")], duration_s=0.1, environ={},
                          host="solo")  # fmt: skip
    fleet = merge([load_report(write_report(tmp_path / "r.json", report))])
    assert [(r["host"], r["rank"]) for r in fleet["ranks"]] == [("solo", None)]
    assert fleet["summary"]["missing_ranks"] == [] and fleet["summary"]["world_sizes"] == []


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no such file"),
        ("", "not JSON"),
        ("[1, 2]", "not a diag report (no schema field"),
        ('{"schema": "diag-fleet/1", "checks": []}', "not a diag report (schema 'diag-fleet/1'"),
        ('{"schema": "diag-report/1"}', "not a diag report"),
    ],
    ids=["missing", "empty", "a-list", "a-fleet-report", "no-checks"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, said):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert main(["merge", str(path), "-o", str(tmp_path / "fleet.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m diag merge: error: {path}: ") and said in err
    assert not (tmp_path / "fleet.json").exists()


def test_a_directory_and_a_rank_given_twice_are_errors(mixed, tmp_path):
    with pytest.raises(FleetError, match="is a directory"):
        load_report(tmp_path)
    twice = tmp_path / "again.json"
    twice.write_text(mixed[0].read_text())
    with pytest.raises(FleetError, match=r"again\.json and .*r0\.json are both from node0 rank 0"):
        merge([load_report(p) for p in (*mixed, twice)])


def test_an_unwritable_output_is_one_line(mixed, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["merge", str(mixed[0]), "-o", str(blocker / "fleet.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m diag merge: error: cannot write") and err.count("\n") == 1


def test_a_world_size_past_the_bound_is_refused_in_one_line(tmp_path, capsys):
    """A report claiming 2**31 ranks (hypothesis found it): the merge would list two billion missing ranks."""
    path = write_report(tmp_path / "r0.json", _rank_report("n", 0, 0, 2**31, [_check("t")]))
    assert main(["merge", str(path), "-o", str(tmp_path / "fleet.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "launch.world_size: expected a whole number from 1 to 1,048,576, got 2147483648" in err and "\n" not in err


def test_missing_ranks_read_as_runs(tmp_path, capsys):
    path = write_report(tmp_path / "r0.json", _rank_report("n", 5, 1, MAX_WORLD_SIZE, [_check("t")]))
    assert main(["merge", str(path), "-o", str(tmp_path / "fleet.json")]) == 1
    assert f"no report from rank(s) 0-4, 6-{MAX_WORLD_SIZE - 1} of {MAX_WORLD_SIZE}" in capsys.readouterr().out
