"""The family registry: configs resolve to their family, no two families claim a preset, a family registered by
a test is built, fed and run with no other code touched, and the generic family builds native configs."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from diag.roots import REMOTE_CODE_FAMILIES, load_snippet, map_fix_lines
from diag.samedevice import run as run_module
from diag.samedevice.verify import check_run, forced_map
from diag.twins import (
    PRESETS,
    ModelSpec,
    build_meta,
    build_tiny,
    example_input_sets,
    language_model_layout,
    resolve_model,
)
from diag.twins.families import _REGISTRY, Config, Family, Inputs, families, family_for, family_named, register
from diag.twins.shrink import tiny_native, tiny_text
from diag.twins.spec import family_of


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"}, "llava"),
        ({"model_type": "llava_next"}, "llava-next"),
        ({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_vision_tower": "x"}, "llava"),
        ({"model_type": "qwen2_vl"}, "qwen2-vl"),
        ({"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}, "qwen2.5-vl"),
        ({"model_type": "qwen3_vl"}, "qwen3-vl"),
        ({"architectures": ["Qwen3VLMoeForConditionalGeneration"]}, "qwen3-vl-moe"),
        ({"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}, "internvl-chat"),
        ({"architectures": ["CogVLMForCausalLM"]}, "cogvlm"),
        ({"architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma"}, "generic"),
    ],
)
def test_each_config_resolves_to_its_family(config: dict[str, Any], name: str) -> None:
    assert family_of(config) == name
    family = family_for(config)
    assert family is not None and family is family_named(name)


def test_a_config_no_family_claims_has_none() -> None:
    assert family_for({"architectures": ["NoSuchVLModel"], "model_type": "nosuch"}) is None
    assert family_for({}) is None


def test_the_generic_family_is_asked_last() -> None:
    """Last of the families that claim configs ("remote" and "unknown" claim none: spec resolution gives them)."""
    ordered = [f for f in families() if f.name not in ("remote", "unknown")]
    assert ordered[-1].name == "generic"
    assert not any(family_named(n).claims({"model_type": n, "architectures": ["X"]}) for n in ("remote", "unknown"))
    assert [f.priority for f in ordered] == sorted(f.priority for f in ordered)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_exactly_one_family_claims_each_preset(name: str) -> None:
    spec = PRESETS[name]
    claiming = [f.name for f in families() if f.claims(spec.config) and f.name != "generic"]
    assert claiming == [spec.family]


def test_remote_code_and_loaders_come_from_the_families() -> None:
    assert frozenset({"internvl-chat", "cogvlm"}) <= REMOTE_CODE_FAMILIES
    assert not {"llava", "qwen2-vl", "qwen2.5-vl", "generic"} & REMOTE_CODE_FAMILIES
    assert "Qwen2_5_VLForConditionalGeneration.from_pretrained(" in load_snippet("qwen2.5-vl", "Qwen/x", "'auto'")
    assert "AutoModel.from_pretrained(" in load_snippet("no-such-family", "org/x", "'auto'")
    paligemma = ModelSpec("pg", "generic", {"architectures": ["PaliGemmaForConditionalGeneration"]})
    assert "PaliGemmaForConditionalGeneration.from_pretrained(" in "\n".join(map_fix_lines(paligemma, "m.json", None))


# -- a family registered by a test ----------------------------------------------------------------------------
class ToyFamily(Family):
    """A Llama language model fed two input sets; "video" also multiplies the embeddings by the head's weight
    outside any module, as a merge written without a move would: a cross-device op when the two are apart."""

    name = "toy"
    model_types = ("toy_vl",)
    loader = "LlamaForCausalLM"

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        fields = {k: v for k, v in config.items() if k != "model_type"}
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        return tiny_text(config)

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        ids = torch.tensor([[1, 5, 6, 7]])
        return {"image": {"input_ids": ids}, "video": {"input_ids": ids, "frames": torch.ones(1)}}

    def run(self, model: nn.Module, inputs: Inputs) -> Iterator[str]:
        yield "forward"
        model(input_ids=inputs["input_ids"])
        if "frames" in inputs:
            yield "merge"
            embeds: Any = model.get_input_embeddings()(inputs["input_ids"])  # type: ignore[operator]
            head: Any = model.get_output_embeddings()
            embeds @ head.weight.T


@pytest.fixture
def toy() -> Iterator[Family]:
    register(ToyFamily)
    try:
        yield _REGISTRY["toy"]
    finally:
        del _REGISTRY["toy"]


def _toy_config(tmp_path: Path) -> Path:
    config = {"model_type": "toy_vl", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
              "num_attention_heads": 4, "vocab_size": 1000, "tie_word_embeddings": False}  # fmt: skip
    path = tmp_path / "toy" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    return path


def test_a_registered_family_is_built_fed_and_run_with_no_other_code(toy: Family, tmp_path: Path) -> None:
    spec = resolve_model(str(_toy_config(tmp_path)))
    assert spec.family == "toy" and "toy" in registered_names()
    meta = build_meta(spec)
    assert all(p.is_meta for p in meta.parameters()) and language_model_layout(meta).num_layers == 3
    tiny = build_tiny(spec)
    assert list(example_input_sets(spec, tiny)) == ["image", "video"]
    assert "LlamaForCausalLM.from_pretrained(" in load_snippet("toy", "org/toy", "'auto'")
    layout = language_model_layout(meta)
    together = {"": 0}
    assert run_module.run_twin(spec, together, simulated_gpus=2).ok
    apart = {layout.embed: 0, layout.layers: 0, layout.norm: 1, layout.head: 1}
    if layout.rotary:
        apart[layout.rotary] = 0
    result = run_module.run_twin(spec, apart, simulated_gpus=2)
    assert result.stage == "merge (video)" and (result.step, result.input_set) == ("merge", "video")
    assert result.cross_device
    verdict = check_run(spec, apart, simulated_gpus=2, meta_model=meta)
    assert verdict.result.stage == "merge (video)"


def registered_names() -> list[str]:
    return [f.name for f in families()]


def test_a_single_input_set_keeps_the_bare_stage_names(recorded_stages: list[str]) -> None:
    spec = PRESETS["llava-1.5-7b"]
    assert run_module.run_twin(spec, forced_map(build_meta(spec), 2, spec.family), simulated_gpus=2).ok
    assert recorded_stages == ["forward", "generate"]


# -- the generic family --------------------------------------------------------------------------------------
def _native(config_class: str, architecture: str, **changes: Any) -> dict[str, Any]:
    config = getattr(transformers, config_class)().to_dict()
    config.update(architectures=[architecture], **changes)
    return json.loads(json.dumps(config))  # as read from a config.json (string keys)


NATIVE = [
    ("LlavaConfig", "LlavaForConditionalGeneration", "image"),
    ("PaliGemmaConfig", "PaliGemmaForConditionalGeneration", "text"),
    ("LlavaOnevisionConfig", "LlavaOnevisionForConditionalGeneration", "text"),
    ("Mistral3Config", "Mistral3ForConditionalGeneration", "text"),  # 4.50+
    ("Idefics3Config", "Idefics3ForConditionalGeneration", "text"),  # 4.47+
]


@pytest.mark.parametrize(("config_class", "architecture", "first_set"), NATIVE)
def test_the_generic_family_builds_and_runs_a_native_config_with_no_preset(
    config_class: str, architecture: str, first_set: str, tmp_path: Path
) -> None:
    if getattr(transformers, architecture, None) is None:
        # Not the generic family's (a family of its own may claim it, and says the class is missing).
        family = family_for({"architectures": [architecture], "model_type": "x"})
        assert family is None or family.unavailable({"architectures": [architecture], "model_type": "x"})
        pytest.skip(f"transformers {transformers.__version__} has no {architecture}")
    spec = ModelSpec("native", "generic", _native(config_class, architecture), (), "bfloat16")
    tiny = build_tiny(spec)
    assert sum(p.numel() for p in tiny.parameters()) < 5_000_000
    sets = example_input_sets(spec, tiny)
    assert list(sets) == [first_set]
    meta_names = {n for n, _ in build_tiny(spec, seed=1).named_modules()}
    assert {n for n, _ in tiny.named_modules()} == meta_names
    result = run_module.run_twin(spec, {"": 0}, simulated_gpus=2)
    assert result.ok, result.error


def test_the_generic_shrink_keeps_layers_experts_mrope_and_ties() -> None:
    config = {
        "model_type": "x", "architectures": ["X"], "tie_word_embeddings": True, "image_token_id": 151655,
        "text_config": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "num_hidden_layers": 40, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                        "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "mlp_only_layers": [3],
                        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20]}},
        "vision_config": {"hidden_size": 1152, "num_heads": 16, "depth": 27, "out_hidden_size": 4096,
                          "intermediate_size": 4304, "deepstack_visual_indexes": [8, 16, 24]},
    }  # fmt: skip
    tiny = tiny_native(config)
    text, vision = tiny["text_config"], tiny["vision_config"]
    assert (text["num_hidden_layers"], text["mlp_only_layers"], tiny["tie_word_embeddings"]) == (40, [3], True)
    assert (text["num_experts"], text["num_experts_per_tok"], text["moe_intermediate_size"]) == (4, 4, 32)
    assert text["rope_scaling"]["mrope_section"] == [6, 5, 5] and text["head_dim"] == 32
    assert text["hidden_size"] == 4 * 32 == vision["out_hidden_size"]
    assert (vision["depth"], vision["deepstack_visual_indexes"], vision["hidden_size"]) == (27, [8, 16, 24], 32)
    assert tiny["image_token_id"] == 255 and text["vocab_size"] == 256
    assert tiny_native(config, experts=None)["text_config"]["num_experts"] == 128
    assert config["text_config"]["num_experts"] == 128  # the input is not changed
    assert copy.deepcopy(config) == config


def test_the_twin_families_of_spec_are_the_families_that_mirror_upstream_code() -> None:
    """spec.TWIN_FAMILIES (needed before the registry loads) names exactly the families with a hand-written twin."""
    from diag.twins.families import families
    from diag.twins.spec import TWIN_FAMILIES

    assert set(TWIN_FAMILIES) == {f.name for f in families() if f.mirrors is not None}


class BrokenToyFamily(ToyFamily):
    """The toy whose generate step reads a field its output does not have, on any map (as Llama 4 on 5.24)."""

    name = "broken-toy"
    model_types = ("broken_toy_vl",)

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        return {"image": {"input_ids": torch.tensor([[1, 5, 6, 7]])}}

    def run(self, model: nn.Module, inputs: Inputs) -> Iterator[str]:
        yield "forward"
        output = model(input_ids=inputs["input_ids"])
        yield "generate"
        output.image_outputs  # noqa: B018 (the missing field is the point)


def test_code_that_fails_on_one_gpu_too_is_model_005_not_a_map_finding(tmp_path: Path) -> None:
    register(BrokenToyFamily)
    try:
        path = _toy_config(tmp_path)
        path.write_text(path.read_text().replace('"toy_vl"', '"broken_toy_vl"'))
        spec = resolve_model(str(path))
        meta = build_meta(spec)
        layout = language_model_layout(meta)
        apart = {layout.embed: 0, layout.layers: 0, layout.norm: 1, layout.head: 1}
        if layout.rotary:
            apart[layout.rotary] = 0
        verdict = check_run(spec, apart, simulated_gpus=2, meta_model=meta)
        assert verdict.cause is not None and verdict.cause.code == "MODEL-005"
        assert "image_outputs" in verdict.cause.explanation and "whole model on cuda:0 too" in verdict.cause.explanation
        assert verdict.fixed_map is None and not verdict.verified
    finally:
        del _REGISTRY["broken-toy"]


# --- the one native base ---------------------------------------------------------------------------------------

NATIVE_FAMILIES = {"llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe", "generic", "gemma3",
                   "mllama", "llama4", "llava-onevision", "idefics3", "smolvlm", "internvl-hf", "glm4v",
                   "phi4-multimodal"}  # fmt: skip


def test_every_family_of_installed_classes_has_the_one_native_base() -> None:
    from diag.twins.families import _native, _native_vlm

    assert {f.name for f in families() if isinstance(f, _native.NativeFamily)} == NATIVE_FAMILIES
    # The hand-written twins and the remote-code family are not native.
    assert not any(isinstance(family_named(n), _native.NativeFamily) for n in ("internvl-chat", "cogvlm"))
    # The former module still gives the same objects, so code written against it keeps working.
    for name in _native_vlm.__all__:
        expected = "prompt" if name == "ids_tensor" else name
        assert getattr(_native_vlm, name) is getattr(_native, expected)


def test_a_native_family_without_its_classes_says_so_in_one_line_and_builds_nothing() -> None:
    from diag.twins.families._native import NativeFamily

    class Missing(NativeFamily):  # not registered: asked directly
        name = "missing-test"
        loader = "NoSuchModelForConditionalGeneration"
        config_class = "LlavaConfig"
        since = "99.0"

    config = {"model_type": "no_such", "architectures": ["NoSuchModelForConditionalGeneration"]}
    reason = Missing().unavailable(config)
    assert reason == (
        f"the installed transformers {transformers.__version__} has no NoSuchModelForConditionalGeneration "
        "(model_type 'no_such'; added in transformers 99.0)"
    )
    with pytest.raises(ValueError, match="NoSuchModelForConditionalGeneration"):
        Missing().build(config)
    Missing.config_class = "NoSuchConfig"
    assert "has no NoSuchConfig, NoSuchModelForConditionalGeneration (model_type" in str(Missing().unavailable(config))
