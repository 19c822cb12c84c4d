"""VLMEvalKit's AUTO_SPLIT InternVL split and run.py's GPU slicing, reproduced for each upstream variant."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diag.devicemap.autosplit import (
    PINNED_MODULES,
    PROCESSES_ASSERTION,
    SplitError,
    VlmevalkitAssertion,
    auto_split_flag_like_vlmevalkit,
    internvl_split,
    layer_counts,
    layer_slots,
    parse_cuda_visible_devices_like_vlmevalkit,
    process_slices,
    split_source,
)

LAYERS = "language_model.model.layers"
# InternVL2-Llama3-76B: a Llama-3-70B language model, 80 decoder layers (FACTS.md, InternVL2 layer counts).
L76B = 80
# What the 76B model has of the pinned modules (Llama: embed_tokens, norm, rotary_emb, lm_head).
PINNED_76B = (
    "vision_model",
    "mlp1",
    "language_model.model.embed_tokens",
    "language_model.model.norm",
    "language_model.model.rotary_emb",
    "language_model.lm_head",
)


def split(**kwargs):
    kwargs.setdefault("num_layers", L76B)
    kwargs.setdefault("layers", LAYERS)
    kwargs.setdefault("pinned", PINNED_76B)
    return internvl_split(**kwargs)


def ordinals(plan):
    return sorted(set(plan.device_map.values()))


# By hand from upstream's formula: per GPU ceil(80 / (n - 0.5)), the first GPU ceil(per / 2).
#   4 GPUs: 80 / 3.5 = 22.86 -> 23; first ceil(11.5) = 12; slots 12 + 23 + 23 + 23 = 81, so layers.80 is written.
#   8 GPUs: 80 / 7.5 = 10.67 -> 11; first ceil(5.5) = 6; slots 6 + 7 * 11 = 83, so layers.80..82 are written.
# Real layers per GPU once layers.79 moves to the first GPU:
#   4 GPUs: 0-11 and 79 -> 13; 12-34 -> 23; 35-57 -> 23; 58-78 -> 21.
#   8 GPUs: 0-5 and 79 -> 7; then 11 each for GPUs 1-6 (6-71); 72-78 -> 7.
@pytest.mark.parametrize(
    ("gpus", "slots", "counts", "extra"),
    [
        (4, [12, 23, 23, 23], {0: 13, 1: 23, 2: 23, 3: 21}, [80]),
        (8, [6, 11, 11, 11, 11, 11, 11, 11], {0: 7, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 7}, [80, 81, 82]),
    ],
    ids=["4gpus", "8gpus"],
)
def test_internvl2_76b_layers_per_gpu(gpus, slots, counts, extra):
    plan = split(visible_gpus=gpus)
    assert layer_slots(L76B, gpus) == slots
    assert layer_counts(plan.device_map, LAYERS, L76B) == counts
    written = sorted(int(k.rsplit(".", 1)[1]) for k in plan.device_map if k.startswith(LAYERS + "."))
    assert written == list(range(L76B)) + extra
    assert [plan.device_map[f"{LAYERS}.{i}"] for i in extra] == [gpus - 1] * len(extra)
    assert f"for layers the 80-layer model does not have: {LAYERS}.{extra[0]}" in " ".join(plan.notes)


def test_76b_on_4_gpus_layer_boundaries():
    device_map = split(visible_gpus=4).device_map
    assert [device_map[f"{LAYERS}.{i}"] for i in (0, 11, 12, 34, 35, 57, 58, 78, 79)] == [0, 0, 1, 1, 2, 2, 3, 3, 0]


@pytest.mark.parametrize("variant", ["dec30-2024", "dec09-2024", "nov-2024"])
def test_pinned_modules_and_the_last_layer_share_the_first_gpu(variant):
    plan = split(visible_gpus=8, variant=variant)
    assert {name: plan.device_map[name] for name in PINNED_76B} == dict.fromkeys(PINNED_76B, plan.first_gpu)
    assert plan.device_map[f"{LAYERS}.79"] == plan.first_gpu
    assert plan.device_map[f"{LAYERS}.78"] != plan.first_gpu


def test_a_plan_becomes_an_auto_split_source():
    plan = split(visible_gpus=4)
    source = split_source(plan)
    assert (source.value, source.origin, source.text, source.kind) == (
        plan.device_map,
        "AUTO_SPLIT",
        "AUTO_SPLIT=1",
        "dict",
    )
    assert source.note == "VLMEvalKit InternVL split, dec30-2024"


def test_the_last_layer_can_stay_where_its_slot_put_it():
    plan = split(visible_gpus=4, last_layer_on_first=False)
    assert plan.device_map[f"{LAYERS}.79"] == 3


def test_two_processes_on_8_gpus_take_4_each_under_dec30():
    ranks = [split(visible_gpus=8, local_rank=rank, local_world_size=2) for rank in (0, 1)]
    assert [ordinals(plan) for plan in ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [(plan.first_gpu, plan.gpus_per_process) for plan in ranks] == [(0, 4), (4, 4)]
    assert "GPUS_PER_PROCESS=8 (default) capped to 4 by device_count // LOCAL_WORLD_SIZE = 8 // 2" in ranks[1].notes
    assert ranks[1].device_map["vision_model"] == 4
    assert layer_counts(ranks[1].device_map, LAYERS, L76B) == {4: 13, 5: 23, 6: 23, 7: 21}


def test_rank_1_overruns_the_node_under_dec09_without_gpus_per_process():
    with pytest.raises(VlmevalkitAssertion) as raised:
        split(visible_gpus=8, local_rank=1, local_world_size=2, variant="dec09-2024")
    assert str(raised.value) == "Process 1 tries to access GPU 16, but only 8 GPUs are available per node."


def test_gpus_per_process_4_gives_rank_1_gpus_4_to_7_under_dec09():
    plan = split(visible_gpus=8, local_rank=1, local_world_size=2, gpus_per_process_env="4", variant="dec09-2024")
    assert ordinals(plan) == [4, 5, 6, 7]


def test_cuda_visible_devices_4_to_7_dec09_writes_ordinals_the_process_lacks():
    plan = split(visible_gpus=4, variant="dec09-2024")
    assert ordinals(plan) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert sorted({o for o in plan.device_map.values() if o >= 4}) == [4, 5, 6, 7]
    assert (
        "names cuda:4, cuda:5, cuda:6, cuda:7 but the process sees 4 GPU(s): CUDA error: invalid device ordinal"
        in plan.notes
    )


def test_cuda_visible_devices_4_to_7_dec30_stays_within_what_the_process_sees():
    plan = split(visible_gpus=4, variant="dec30-2024")
    assert ordinals(plan) == [0, 1, 2, 3]
    assert not [note for note in plan.notes if "invalid device ordinal" in note]


def test_nov_2024_interleaves_ranks():
    ranks = [split(visible_gpus=8, local_rank=rank, local_world_size=2, variant="nov-2024") for rank in (0, 1)]
    assert [ordinals(plan) for plan in ranks] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [plan.first_gpu for plan in ranks] == [0, 1]
    assert layer_counts(ranks[1].device_map, LAYERS, L76B) == {1: 13, 3: 23, 5: 23, 7: 21}


def test_nov_2024_ignores_gpus_per_process():
    plan = split(visible_gpus=8, gpus_per_process_env="2", variant="nov-2024")
    assert ordinals(plan) == list(range(8))
    assert "GPUS_PER_PROCESS=2 is not read by this split" in plan.notes


def test_one_process_on_8_gpus_is_the_same_map_in_every_variant():
    maps = [split(visible_gpus=8, variant=v).device_map for v in ("dec30-2024", "dec09-2024", "nov-2024")]
    assert maps[0] == maps[1] == maps[2]


def test_gpus_per_process_below_the_cap_is_used():
    # 2 GPUs: 80 / 1.5 = 53.3 -> 54; first 27; GPU 0 holds 0-26 and 79, GPU 1 holds 27-78 (and the phantom 80).
    plan = split(visible_gpus=8, gpus_per_process_env="2")
    assert ordinals(plan) == [0, 1]
    assert plan.gpus_per_process == 2
    assert layer_counts(plan.device_map, LAYERS, L76B) == {0: 28, 1: 52}


def test_a_gpus_per_process_int_cannot_read_raises_as_upstream():
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\) with base 10: 'four'$"):
        split(visible_gpus=8, gpus_per_process_env="four")


def test_more_processes_than_gpus_leaves_a_process_without_any():
    with pytest.raises(SplitError, match=r"IndexError: list index out of range"):
        split(visible_gpus=3, local_world_size=4)


def test_an_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="expected one of dec30-2024, dec09-2024, nov-2024"):
        split(visible_gpus=4, variant="jan-2025")


@given(st.integers(1, 128), st.integers(1, 16))
def test_every_layer_lands_and_slots_follow_the_formula(num_layers, gpus):
    plan = split(num_layers=num_layers, pinned=PINNED_MODULES, visible_gpus=gpus, gpus_per_process_env=str(gpus))
    assert plan.gpus_per_process == gpus
    per_gpu = math.ceil(num_layers / (gpus - 0.5))
    slots = layer_slots(num_layers, gpus)
    assert slots == [math.ceil(per_gpu / 2)] + [per_gpu] * (gpus - 1)
    assert sum(layer_counts(plan.device_map, LAYERS, num_layers).values()) == num_layers
    layer_keys = [k for k in plan.device_map if k.startswith(LAYERS + ".")]
    assert len(layer_keys) == sum(slots) >= num_layers
    assert {plan.device_map[name] for name in PINNED_MODULES} == {0}
    assert plan.device_map[f"{LAYERS}.{num_layers - 1}"] == 0
    assert set(plan.device_map.values()) <= set(range(gpus))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4,5,6,7", [4, 5, 6, 7]), ("0", [0]), ("0, 1", [0, 1]), ("", [])],
)
def test_cuda_visible_devices_parsed_like_run_py(value, expected):
    assert parse_cuda_visible_devices_like_vlmevalkit(value) == expected


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        ("GPU-5b3f2c1a-9d4e-4c2b-8f1a-0e2d3c4b5a69", "GPU-5b3f2c1a-9d4e-4c2b-8f1a-0e2d3c4b5a69"),
        ("0,MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
        ("4,5,", ""),
    ],
)
def test_cuda_visible_devices_entries_int_cannot_read_raise_as_run_py(value, entry):
    with pytest.raises(ValueError) as raised:
        parse_cuda_visible_devices_like_vlmevalkit(value)
    assert str(raised.value) == f"invalid literal for int() with base 10: {entry!r}"


def test_8_gpus_2_processes():
    assert process_slices(8, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_7_gpus_2_processes_leave_one_unused():
    slices = process_slices(7, 2)
    assert slices == [[0, 1, 2], [3, 4, 5]]
    assert set(range(7)) - {i for s in slices for i in s} == {6}


def test_more_processes_than_gpus_fails_run_pys_assertion():
    with pytest.raises(VlmevalkitAssertion) as raised:
        process_slices(2, 4)
    assert str(raised.value) == PROCESSES_ASSERTION
    assert PROCESSES_ASSERTION == "The number of processes should be less than or equal to the number of GPUs"


@pytest.mark.parametrize(("ngpu", "processes", "expected"), [(8, 1, [list(range(8))]), (0, 2, [[], []])])
def test_run_py_does_not_slice_for_one_process_or_no_gpu_list(ngpu, processes, expected):
    assert process_slices(ngpu, processes) == expected


@given(st.integers(2, 16).flatmap(lambda p: st.tuples(st.integers(p, 64), st.just(p))))
def test_slices_are_equal_contiguous_and_disjoint(case):
    ngpu, processes = case
    slices = process_slices(ngpu, processes)
    assert [len(s) for s in slices] == [ngpu // processes] * processes
    flat = [i for s in slices for i in s]
    assert flat == list(range(len(flat)))
    assert ngpu - len(flat) == ngpu % processes


@pytest.mark.parametrize(
    ("auto_split", "device_count", "world_size", "enabled"),
    [
        ("1", 1, 1, True),
        (None, 8, 8, False),
        (None, 8, 2, True),
        (None, 6, 4, False),
        # The Dec 2024 rule only ever turns splitting on: AUTO_SPLIT=0 with 8 GPUs and one process still splits.
        ("0", 8, 1, True),
        (None, 1, 1, False),
    ],
)
def test_auto_split_flag(auto_split, device_count, world_size, enabled):
    assert auto_split_flag_like_vlmevalkit(auto_split, device_count, world_size) is enabled
