"""Validation and planning against the installed transformers / accelerate, on a small Llama on the meta device."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from transformers import LlamaConfig, LlamaForCausalLM

from diag.devicemap.plan import GIB, bytes_by_device, plan_device_map, summarize_modules
from diag.devicemap.validate import (
    buffer_only_modules,
    check_dict_map,
    correct_dict_map,
    cuda_ordinal,
    physical_remap,
    resolved_device,
    transformers_rejects,
)

EMPTY_MESSAGE = (
    "ValueError: When passing device_map as a string, the value needs to be a device name (e.g. cpu, cuda:0) or "
    "'auto', 'balanced', 'balanced_low_0', 'sequential' but found ."
)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)  # fmt: skip
    with init_empty_weights():
        return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def llama_70b() -> torch.nn.Module:
    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=128256)  # fmt: skip
    with init_empty_weights():
        return LlamaForCausalLM(config).to(torch.bfloat16)


GOOD = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.2": 2,
        "model.layers.3": 3, "model.norm": 3, "lm_head": 3}  # fmt: skip


def test_the_empty_value_gets_transformers_own_error():
    assert transformers_rejects("") == EMPTY_MESSAGE


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "disk", "GPU:0"])
def test_strings_torch_cannot_parse_are_rejected(value):
    assert transformers_rejects(value) == EMPTY_MESSAGE[: -len(".")].replace("found ", f"found {value}") + "."


def test_a_negative_int_is_rejected_with_transformers_message():
    assert transformers_rejects(-1).startswith("ValueError: You can't pass device_map as a negative int.")


@pytest.mark.parametrize("value", ["auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda", "cuda:3", 0, 2])
def test_valid_values_pass(value):
    assert transformers_rejects(value) is None


def test_cuda_resolves_like_the_installed_transformers(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    resolved = resolved_device("cuda")
    try:
        from transformers.integrations.accelerate import check_and_set_device_map  # noqa: F401
    except ImportError:  # transformers 4.x hands "cuda" to torch.device: the current device
        assert cuda_ordinal(resolved) == 0
    else:  # transformers 5: cuda -> cuda:{LOCAL_RANK}
        assert cuda_ordinal(resolved) == 2


def test_the_model_level_rotary_embedding_holds_only_buffers(llama):
    # transformers 4.45 also keeps a deprecated rotary_emb in each attention block; a layer key covers those.
    assert "model.rotary_emb" in buffer_only_modules(llama)
    assert all("rotary_emb" in name for name in buffer_only_modules(llama))


def test_a_map_without_rotary_emb_is_a_warning_with_a_fix(llama):
    report = check_dict_map(llama, GOOD, 4, [0, 1, 2, 3])
    assert report.failures == []
    assert [w.code for w in report.warnings] == ["MAP-007"]
    assert report.warnings[0].fixed_map == {**GOOD, "model.rotary_emb": 0}


def test_physical_numbers_are_recognised_and_remapped(llama):
    physical = {k: v + 4 for k, v in GOOD.items()}
    report = check_dict_map(llama, physical, 4, [4, 5, 6, 7])
    assert [f.code for f in report.failures] == ["MAP-004"]
    assert report.failures[0].fixed_map == GOOD


def test_ordinals_beyond_the_visible_gpus_that_are_not_the_selection_fail(llama):
    report = check_dict_map(llama, {**GOOD, "lm_head": 5}, 4, [0, 1, 2, 3])
    assert [f.code for f in report.failures] == ["MAP-003"]
    assert physical_remap([0, 5], [0, 1, 2, 3], 4) is None


def test_unknown_keys_values_and_coverage_all_reported(llama):
    bad = {"model.embed_tokens": 0, "model.layer.0": 0, "model.layers.1": "gpu", "lm_head": 0}
    report = check_dict_map(llama, bad, 4, [0, 1, 2, 3])
    assert [f.code for f in report.failures] == ["MAP-008", "MAP-006"]
    assert [f.code for f in report.warnings] == ["MAP-005", "MAP-007"]
    assert "model.layer.0 -> model.layers.0" in report.warnings[0].message
    # accelerate's own list of uncovered parameters, gathered into the modules that own them
    assert report.failures[1].message.endswith("in model.layers.0, model.layers.2, model.layers.3, model.norm")


def test_keys_for_layers_that_do_not_exist_are_dropped_not_renamed(llama):
    report = check_dict_map(llama, {**GOOD, "model.rotary_emb": 0, "model.layers.4": 3, "model.layers.40": 3}, 4, [0])
    assert report.failures == [] and [w.code for w in report.warnings] == ["MAP-005"]
    assert report.warnings[0].fixed_map == {**GOOD, "model.rotary_emb": 0}


def test_the_corrected_map_passes_the_same_checks(llama):
    messy = {**{k: v + 4 for k, v in GOOD.items()}, "model.layer.2": 6}
    del messy["model.layers.2"]
    fixed, report = correct_dict_map(llama, messy, 4, [4, 5, 6, 7])
    assert fixed == {**GOOD, "model.rotary_emb": 0}
    assert report.failures == [] and report.warnings == []


@pytest.mark.parametrize("strategy", ["auto", "balanced", "balanced_low_0", "sequential"])
def test_plans_come_from_the_installed_planner(llama_70b, strategy):
    memory = {0: 80 * GIB, 1: 80 * GIB, 2: 80 * GIB, 3: 80 * GIB, "cpu": 512 * GIB}
    device_map = plan_device_map(llama_70b, strategy, memory)
    sizes = bytes_by_device(llama_70b, device_map)
    total = sum(t.numel() * t.element_size() for t in [*llama_70b.parameters(), *llama_70b.buffers()])
    assert sum(sizes.values()) == total
    assert set(sizes) <= {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    layers = [v for k, v in device_map.items() if k.startswith("model.layers.")]
    assert layers == sorted(layers)  # the planner fills GPUs in order
    if strategy == "sequential":
        assert set(layers) == {0, 1}  # 141 GB in order over 80 GB cards
    elif strategy == "balanced_low_0":
        assert sizes.get("cuda:0", 0) < sizes["cuda:1"]
    else:
        assert set(layers) == {0, 1, 2, 3}


def test_a_70b_model_on_two_40gb_gpus_is_planned_partly_onto_the_cpu(llama_70b):
    device_map = plan_device_map(llama_70b, "auto", {0: 40 * GIB, 1: 40 * GIB, "cpu": 512 * GIB})
    sizes = bytes_by_device(llama_70b, device_map)
    assert sizes["cpu"] > 50 * GIB and sizes["cuda:0"] < 40 * GIB and sizes["cuda:1"] < 40 * GIB


def test_summaries_read_as_layer_ranges():
    keys = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2", "model.layers.5", "lm_head"]
    assert summarize_modules(keys, "model.layers") == "model.embed_tokens, layers 0-2, 5, lm_head"
