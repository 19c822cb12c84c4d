"""Work bounded by the input, not by its square or by a count someone typed: 10^9 processes, 1,000-GPU nodes,
100,000-key maps. Each test calls the function at the bound and asserts what it summarises; timings are the
bench's (bench/run.py --only bounds), never an assertion here."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from diag.checking import USER_PROPERTY, Check, CheckFailed
from diag.devicemap.validate import SUGGESTED_KEYS, _Suggester, check_dict_map
from diag.dist.collective import MIN_TIMEOUT_S, TimeoutValueError, parse_timeout
from diag.layout import ProcessCount, span, vlmevalkit_layout
from diag.options import DiagOptions
from diag.topology.records import Node, Topology
from diag.topology.selection import resolve_selection, simulated_cuda_view
from diag.topology.simulated import simulated_node
from tests.conftest import REPO

BILLION = 1_000_000_000


def _node(gpus: int, island: int = 8) -> Node:
    """A node of `gpus` GPUs in NVLink islands: every pair listed, true inside an island, false across."""
    base = simulated_node("8xA100-80GB")
    many = tuple(replace(base.gpus[0], nvml_index=i, uuid=f"GPU-{i:08x}-0000") for i in range(gpus))
    p2p = tuple((a, b, a // island == b // island) for a in range(gpus) for b in range(a + 1, gpus))
    return replace(base, gpus=many, p2p=p2p)


def _topology(node: Node, env: dict[str, str] | None = None) -> Topology:
    env = env or {}
    return Topology(node, simulated_cuda_view(node, env, "2.13.0"), resolve_selection(node, None, env))


def _properties(check_props: list[tuple[str, object]]) -> dict[str, Any]:
    data: dict[str, Any] = {"warnings": []}
    for name, value in check_props:
        assert name == USER_PROPERTY and isinstance(value, dict)
        data.update(value.get("data", {}))
        if "warning" in value:
            data["warnings"].append(value["warning"])
    return data


@pytest.fixture
def checks_module(pytestconfig: pytest.Config) -> Callable[[str], ModuleType]:
    """A checks/ module loaded under a private name: importing the package `checks` here would make pytester's
    copies of checks/ (other tests) clash with it. Its tests are marked `diag`, which the plugin registers."""
    pytestconfig.addinivalue_line("markers", "diag: a diag pre-flight check")

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"diag_bounds_{name}", REPO / "checks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        return module

    return load


# -- processes -----------------------------------------------------------------------------------------------------
def test_a_range_of_a_billion_names_is_a_summary():
    assert span("cuda:", 8, BILLION) == "cuda:8-cuda:999999999 (999999992 in all)"
    assert span("cuda:", 2, 4) == "cuda:2, cuda:3"
    assert span("cuda:", 4, 4) == ""


def test_a_billion_processes_fail_layout_001_with_a_range_not_a_list(checks_module):
    layout = checks_module("test_layout")
    Launch, test_processes_do_not_outnumber_the_visible_gpus = (
        layout.Launch,
        layout.test_processes_do_not_outnumber_the_visible_gpus,
    )

    options = DiagOptions(None, "8xA100-80GB", None, None, None, None, BILLION, None)
    launch = Launch(options, ProcessCount(BILLION, "--processes"), None)
    props: list[tuple[str, object]] = []
    with pytest.raises(CheckFailed) as failed:
        test_processes_do_not_outnumber_the_visible_gpus(
            launch, _topology(simulated_node("8xA100-80GB")), Check(props), _request("--processes", str(BILLION))
        )
    payload = failed.value.payload
    assert payload["code"] == "LAYOUT-001"
    assert "take cuda:8-cuda:999999999 (999999992 in all): CUDA error: invalid device ordinal" in payload["message"]
    assert len(payload["message"]) < 300
    assert _properties(props)["launch"]["processes"] == BILLION
    assert payload["fix"]["commands"] == ["pytest --processes 8"]  # the re-check with as many processes as GPUs


def _request(*args: str) -> Any:
    """The one thing the check reads from pytest's request: this run's command line."""
    return SimpleNamespace(config=SimpleNamespace(invocation_params=SimpleNamespace(args=args)))


def test_vlmevalkit_with_no_gpu_list_and_a_billion_processes_is_one_slice():
    node = replace(simulated_node("1xA100-80GB"), gpus=())
    layout = vlmevalkit_layout(_topology(node), BILLION)
    assert len(layout.slices) == 1 and layout.slices[0].tokens == () and layout.unused == ()


def test_local_world_size_of_a_billion_is_read_as_a_count_only():
    from diag.layout import local_processes

    count = local_processes(None, {"LOCAL_WORLD_SIZE": str(BILLION)})
    assert count == ProcessCount(BILLION, "LOCAL_WORLD_SIZE")


# -- peer access ------------------------------------------------------------------------------------------------
def test_pairs_without_peer_access_are_counted_and_the_first_few_kept():
    node = _node(1000)
    shown, count = node.pairs_without_p2p(range(1000), 8)
    islands = 1000 // 8
    assert count == 1000 * 999 // 2 - islands * (8 * 7 // 2)
    assert shown == ((0, 8), (0, 9), (0, 10), (0, 11), (0, 12), (0, 13), (0, 14), (0, 15))
    # Listed in another order, the same first pairs are kept; only the selected GPUs count.
    reversed_node = replace(node, p2p=tuple(reversed(node.p2p)))
    assert reversed_node.pairs_without_p2p(range(1000), 8) == (shown, count)
    assert node.pairs_without_p2p([0, 1, 8], 8) == (((0, 8), (1, 8)), 2)


def test_the_simulated_view_keeps_the_reported_pairs_only():
    node = _node(16)
    view = simulated_cuda_view(node, {"CUDA_VISIBLE_DEVICES": "8,0,1"}, "2.13.0")
    assert view.peer_access == ((0, 1, False), (0, 2, False), (1, 2, True))
    unlisted = replace(node, p2p=((0, 1, True),))
    assert simulated_cuda_view(unlisted, {}, "2.13.0").peer_access == ((0, 1, True),)


def test_the_peer_check_on_1000_gpus_records_a_count_not_a_matrix(checks_module):
    env_checks = checks_module("test_env")
    LISTED_PAIRS, test_selected_gpus_can_reach_their_peers = (
        env_checks.LISTED_PAIRS,
        env_checks.test_selected_gpus_can_reach_their_peers,
    )

    node = _node(1000)
    props: list[tuple[str, object]] = []
    test_selected_gpus_can_reach_their_peers(node, resolve_selection(node, None, {}), Check(props))
    data = _properties(props)
    p2p = data["p2p"]
    assert "matrix" not in p2p and len(p2p["nvml_indices"]) == 1000
    assert p2p["without_access_count"] == 496000 and len(p2p["without_access"]) == LISTED_PAIRS
    (warning,) = data["warnings"]
    assert warning["code"] == "ENV-009"
    assert "0<->8, 0<->9" in warning["message"] and "and 495992 more pairs" in warning["message"]
    assert len(warning["message"]) < 300


def test_the_peer_check_on_a_small_node_keeps_the_matrix(checks_module):
    test_selected_gpus_can_reach_their_peers = checks_module("test_env").test_selected_gpus_can_reach_their_peers

    node = _node(4, island=2)
    props: list[tuple[str, object]] = []
    test_selected_gpus_can_reach_their_peers(node, resolve_selection(node, None, {}), Check(props))
    p2p = _properties(props)["p2p"]
    assert p2p["matrix"][0] == [None, True, False, False]
    assert p2p["without_access"] == [[0, 2], [0, 3], [1, 2], [1, 3]] and p2p["without_access_count"] == 4


# -- device-map keys ------------------------------------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(4))
        self.head = torch.nn.Linear(2, 2)


def test_a_100000_key_map_gets_20_suggestions_and_a_count():
    model = _Tiny()
    device_map: dict[str, Any] = {"embed": 0, "layers": 0, "head": 0}
    device_map.update({f"layers.{i % 4}.extra_{i}": 0 for i in range(100_000)})
    report = check_dict_map(model, device_map, 1, [0])
    (warning,) = [w for w in report.warnings if w.code == "MAP-005"]
    assert warning.message.endswith("… (99994 more)") and len(warning.message) < 600
    assert warning.fixed_map == {"embed": 0, "layers": 0, "head": 0}


def test_suggestions_stop_after_the_first_keys_and_still_find_typos():
    suggester = _Suggester(["", "model", "model.layers", "model.layers.0", "model.norm", "lm_head"])
    assert suggester.closest("model.layer.0") == "model.layers.0"
    assert suggester.closest("lm_haed") == "lm_head"
    assert suggester.closest("model.layers.40") is None  # only a number differs: a layer that does not exist
    for _ in range(SUGGESTED_KEYS):
        suggester.closest("unrelated")
    assert suggester.closest("model.layer.0") is None  # past the bound: counted, not matched


# -- collective timeout ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0.5", "1", "1.99"])
def test_a_collective_timeout_below_the_minimum_is_refused_in_one_line(value):
    with pytest.raises(TimeoutValueError) as refused:
        parse_timeout(value)
    assert f"DIAG_COLLECTIVE_TIMEOUT={value!r}" in str(refused.value) and "\n" not in str(refused.value)
    assert parse_timeout(str(MIN_TIMEOUT_S)) == MIN_TIMEOUT_S == 2.0


def test_the_bench_writes_inputs_at_the_bounds(tmp_path):
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("diag_bench_child_b", Path(__file__).parents[1] / "bench/child.py")
    assert spec is not None and spec.loader is not None
    child = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = child
    spec.loader.exec_module(child)
    made = child.bounds_files(str(tmp_path), 24, 500)
    assert made["p2p_pairs"] == 24 * 23 // 2 and made["map_keys"] == 500
    from diag.topology.files import load_node

    node = load_node(made["topology"])
    assert len(node.gpus) == 24 and node.p2p_status(0, 7) is True and node.p2p_status(0, 8) is False
    assert os.path.getsize(made["map"]) == made["map_bytes"]


def test_the_report_lists_peer_pairs_of_a_large_selection_without_access_only():
    from diag.report import P2P_LISTED, topology_section

    large = topology_section(_topology(_node(1000)))
    assert len(large["p2p"]) == P2P_LISTED and all(ok is False for _, _, ok in large["p2p"])
    assert large["p2p"][0] == [0, 8, False]
    assert large["p2p_counts"] == {"reported": 499500, "without_access": 496000, "listed": P2P_LISTED}
    small = topology_section(_topology(_node(4, island=2)))
    assert small["p2p"] == [[0, 1, True], [0, 2, False], [0, 3, False], [1, 2, False], [1, 3, False], [2, 3, True]]
    assert "p2p_counts" not in small
