"""Parsing --gpus / --simulate, and reading CUDA_VISIBLE_DEVICES the way nvidia-smi and CUDA read it."""

from __future__ import annotations

import argparse
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from diag.topology.records import Gpu, Node
from diag.topology.selection import (
    cuda_enumeration,
    parse_gpus,
    resolve_selection,
    simulated_cuda_view,
)
from diag.topology.simulated import MAX_GPUS, parse_spec, simulated_node

NODE = simulated_node("8xA100-80GB")
MIXED = simulated_node("2xV100-32GB+2xA100-80GB")


@given(st.lists(st.integers(0, 4096), min_size=1, max_size=16, unique=True))
def test_index_lists_round_trip(indices):
    assert parse_gpus(",".join(map(str, indices))) == tuple(map(str, indices))


@given(st.lists(st.integers(0, 64), min_size=1, max_size=8, unique=True), st.sampled_from([" ", "  ", "\t"]))
def test_blanks_around_entries_are_ignored(indices, blank):
    assert parse_gpus(f",{blank}".join(map(str, indices))) == tuple(map(str, indices))


@example("0\x1f")  # hypothesis found it: a blank for str.strip() that int() refuses
@given(st.text(min_size=1, max_size=12).filter(lambda t: "," not in t))
def test_a_token_that_is_no_index_or_uuid_is_a_usage_error(token):
    valid = re.fullmatch(r"\s*(\d+|GPU-[0-9a-fA-F][0-9a-fA-F-]*|MIG-[0-9a-zA-Z][0-9a-zA-Z/-]*)\s*", token)
    if valid:
        # str.strip() and `\s` take '\x1f' and its kind as blanks, int() does not: compare with the stripped token.
        assert parse_gpus(token) == (token.strip() if not token.strip().isdigit() else str(int(token.strip())),)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_gpus(token)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("4,x", "'4,x' has 'x': expected comma-separated GPU indices"),
        ("", "empty value"),
        ("  ", "empty value"),
        ("1,1", "names '1' twice"),
        ("01,1", "twice"),
        ("GPU-ab,GPU-AB", "twice"),
        ("4,,5", "has ''"),
        ("-1", "has '-1'"),
    ],
)
def test_malformed_gpus(value, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse_gpus(value)


def test_uuids_and_mig_uuids_are_accepted_as_written():
    assert parse_gpus("GPU-8f3a,MIG-5c0d0d2a-1b2c-5d6e-8f90-123456789abc") == (
        "GPU-8f3a",
        "MIG-5c0d0d2a-1b2c-5d6e-8f90-123456789abc",
    )


@given(st.lists(st.tuples(st.integers(1, 16), st.sampled_from(["A100", "H100", "V100", "P40", "L40S"])), min_size=1))
def test_simulated_nodes_number_gpus_in_bus_order_with_unique_identities(groups):
    spec = "+".join(f"{count}x{name}-80GB" for count, name in groups)
    if sum(c for c, _ in groups) > MAX_GPUS:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_spec(spec)
        return
    node = simulated_node(spec)
    assert [g.nvml_index for g in node.gpus] == list(range(sum(c for c, _ in groups)))
    assert len({g.uuid for g in node.gpus}) == len(node.gpus)
    assert [g.pci_bus_id for g in node.gpus] == sorted(g.pci_bus_id for g in node.gpus)


@pytest.mark.parametrize(
    "spec", ["0xA100-80GB", "banana", "8xA100", "8xA100-0GB", "x-80GB", "8A100-80GB", "8xA100-80GB+"]
)
def test_malformed_simulate_specs(spec):
    with pytest.raises(argparse.ArgumentTypeError, match="8xA100-80GB"):
        parse_spec(spec)


def test_spec_names_and_memory():
    node = simulated_node("1xP40-24GB+1xH100-80GB")
    assert [(g.name, g.memory_total_mib) for g in node.gpus] == [("Tesla P40", 24576), ("NVIDIA H100 80GB HBM3", 81920)]


def test_selection_prefers_gpus_then_cuda_visible_devices_then_all():
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert resolve_selection(NODE, ("4", "5"), env).nvml_indices == (4, 5)
    assert resolve_selection(NODE, None, env).nvml_indices == (2, 3)
    assert resolve_selection(NODE, None, {}).nvml_indices == tuple(range(8))
    assert resolve_selection(NODE, None, {"CUDA_VISIBLE_DEVICES": ""}).entries == ()


def test_selection_names_what_the_node_lacks():
    selection = resolve_selection(NODE, ("7", "8", "GPU-ffff"), {})
    assert selection.nvml_indices == (7,)
    assert selection.missing == ("8", "GPU-ffff")


def test_an_ambiguous_uuid_prefix_selects_nothing():
    first_chars = [g.uuid[4] for g in simulated_node("64xA100-80GB").gpus]
    shared = "GPU-" + next(c for c in first_chars if first_chars.count(c) > 1)
    node = simulated_node("64xA100-80GB")
    assert resolve_selection(node, parse_gpus(shared), {}).missing == (shared,)


def _view(node: Node, **env: str) -> list[int]:
    view = simulated_cuda_view(node, env, "2.13.0")
    by_uuid = {g.uuid: g.nvml_index for g in node.gpus}
    return [by_uuid[d.uuid] for d in view.devices]


def test_cuda_hides_an_invalid_entry_and_every_entry_after_it():
    assert _view(NODE, CUDA_VISIBLE_DEVICES="4,5,9,6", CUDA_DEVICE_ORDER="PCI_BUS_ID") == [4, 5]
    assert _view(NODE, CUDA_VISIBLE_DEVICES="4,4,6", CUDA_DEVICE_ORDER="PCI_BUS_ID") == [4]
    assert _view(NODE, CUDA_VISIBLE_DEVICES="", CUDA_DEVICE_ORDER="PCI_BUS_ID") == []


def test_cuda_reads_uuids_and_prefixes():
    six = NODE.gpus[6].uuid
    assert _view(NODE, CUDA_VISIBLE_DEVICES=f"{six[:10]},1") == [6, 1]


def test_fastest_first_puts_the_newer_gpus_first_on_a_mixed_node():
    assert [g.nvml_index for g in cuda_enumeration(MIXED, "FASTEST_FIRST")] == [2, 3, 0, 1]
    assert [g.nvml_index for g in cuda_enumeration(MIXED, "PCI_BUS_ID")] == [0, 1, 2, 3]
    assert _view(MIXED, CUDA_VISIBLE_DEVICES="0") == [2]
    assert _view(MIXED, CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID") == [0]


def test_identical_gpus_keep_bus_order_under_fastest_first():
    assert [g.nvml_index for g in cuda_enumeration(NODE, "FASTEST_FIRST")] == list(range(8))


def test_a_mig_instance_is_selected_by_its_uuid():
    gpu = NODE.gpus[3]
    mig = "MIG-5c0d0d2a-1b2c-5d6e-8f90-123456789abc"
    node = Node("file", "n", (*NODE.gpus[:3], Gpu(**{**vars(gpu), "mig_mode": True, "mig_uuids": (mig,)})))
    selection = resolve_selection(node, (mig,), {})
    assert selection.nvml_indices == (3,) and selection.entries[0].uuid == mig
    view = simulated_cuda_view(node, {"CUDA_VISIBLE_DEVICES": mig}, None)
    assert [d.uuid for d in view.devices] == [mig]
