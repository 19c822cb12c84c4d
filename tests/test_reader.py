"""Property: a mutated valid file (fields dropped, types changed, huge, negative or NaN numbers, deep nesting, cut
short) is either accepted or refused with the reader's own one-line error, never another exception; and a
topology that is accepted replays into a report that passes the report schema."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diag.devicemap.sources import DeviceMapSyntaxError, parse_device_map_option
from diag.fleet import FleetError, fleet_text, load_report, merge
from diag.report import build_report
from diag.topology import build_topology
from diag.topology.files import load_node, node_to_dict
from diag.topology.simulated import simulated_node
from tests.conftest import REPO

FLEET_SCHEMA = json.loads((REPO / "diag" / "schema" / "diag-fleet-1.json").read_text())
REPORT_SCHEMA = json.loads((REPO / "diag" / "schema" / "diag-report-1.json").read_text())
DEEP = "deep-nesting-"  # a string value that _nest() turns into n nested lists in the JSON text
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 2**31, 10**12, 1e999, -1e999]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(min_value=60, max_value=3000).map(lambda n: f"{DEEP}{n}"),  # nesting, written into the text
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):  # the first few entries stand for the rest
            found += _paths(item, (*path, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> str:
    """The valid document's JSON with 1-3 mutations, sometimes cut short."""
    doc = json.loads(json.dumps(valid))
    pick = draw(st.randoms(use_true_random=False))  # uniform over the paths: sampled_from favours the first ones
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = pick.choice(_paths(doc))
        if not path:
            doc = draw(VALUES) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(VALUES)
        except (KeyError, IndexError, TypeError):  # an earlier mutation changed the shape
            continue
    text = re.sub(rf'"{DEEP}(\d+)"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), json.dumps(doc))
    # (json.dumps writes NaN and Infinity as the tokens json.loads reads back)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text


def _one_line(error: Exception) -> None:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.json"
    path.write_text(text)
    return path


VALID_NODE = {**node_to_dict(simulated_node("2xA100-80GB")), "p2p": [[0, 1, True]]}
VALID_NODE["gpus"][1]["processes"] = [{"pid": 42, "name": "python", "used_mib": 1024}]


def _node_with(change: Any) -> str:
    data = json.loads(json.dumps(VALID_NODE))
    change(data)
    return json.dumps(data)


@settings(SETTINGS, max_examples=400)
@given(text=mutated(VALID_NODE))
@example(text=_node_with(lambda d: d["gpus"][1]["processes"][0].update(used_mib="1024")))  # the study's two cases
@example(text=_node_with(lambda d: d.update(driver_version=550)))
def test_a_mutated_topology_is_accepted_into_a_valid_report_or_refused_in_one_line(tmp_path, text):
    try:
        node = load_node(str(_write(tmp_path, text)))
    except argparse.ArgumentTypeError as exc:
        _one_line(exc)
        return
    topology = build_topology(env={}, replay=node)
    report = build_report(command=["pytest"], topology=topology, checks=[], duration_s=0.1, environ={}, host="h")
    jsonschema.validate(json.loads(json.dumps(report)), REPORT_SCHEMA)


VALID_MAP = {"vision_tower": 0, "multi_modal_projector": "cuda:0", "language_model.layers.0": 1, "lm_head": "cpu"}


@SETTINGS
@given(text=mutated(VALID_MAP))
def test_a_mutated_map_file_is_a_map_of_devices_or_refused_in_one_line(tmp_path, text):
    try:
        source = parse_device_map_option(f"@{_write(tmp_path, text)}")
    except DeviceMapSyntaxError as exc:
        _one_line(exc)
        return
    assert isinstance(source.value, dict)
    assert all(isinstance(v, int | str) and not isinstance(v, bool) for v in source.value.values())


def _valid_report() -> dict[str, Any]:
    node = simulated_node("2xA100-80GB")
    topology = build_topology(env={}, replay=node)
    check = {"nodeid": "checks/test_env.py::test_gpu_free[gpu1]", "outcome": "failed", "duration_s": 0.1,
             "code": "ENV-006", "message": "busy", "subject": "GPU 1",
             "fix": {"summary": "free it", "details": "", "commands": [], "env": {}, "device_map_file": None,
                     "verified": False}, "references": [], "warnings": [], "data": {}}  # fmt: skip
    launch = {"launcher": "torchrun", "rank": 0, "world_size": 2, "local_rank": 0, "local_world_size": 2,
              "node_rank": 0, "master_addr": "n0", "master_port": 29500, "agent_store": True}  # fmt: skip
    report = build_report(command=["pytest"], topology=topology, checks=[check], duration_s=0.1, environ={},
                          host="n0", launch=launch)  # fmt: skip
    return json.loads(json.dumps(report))


@settings(SETTINGS, max_examples=300)
@given(text=mutated(_valid_report()))
def test_a_mutated_report_merges_or_is_refused_in_one_line(tmp_path, text):
    try:
        source = load_report(_write(tmp_path, text))
    except FleetError as exc:
        _one_line(exc)
        return
    fleet = merge([source])
    assert fleet["summary"]["reports"] == 1 and fleet_text(fleet)
    jsonschema.validate(json.loads(json.dumps(fleet)), FLEET_SCHEMA)
