"""Twins: presets, configs and hub ids resolve; meta twins have the real tree and sizes; tiny twins run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from diag.twins import (
    FAMILIES,
    PRESETS,
    LmLayout,
    ModelSpec,
    UnknownModel,
    build_meta,
    build_tiny,
    example_inputs,
    language_model_layout,
    no_split_modules,
    preset_for_checkpoint,
    resolve_model,
)
from diag.twins.internvl import TwinTokenizer
from diag.twins.presets import PUBLISHED_PARAMS

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

# Language-model decoder layers per preset (FACTS.md "InternVL2"; the published config.json files).
LM_LAYERS = {
    "llava-1.5-7b": 32,
    "llava-1.5-13b": 40,
    "llava-v1.6-34b": 60,
    "llava-next-72b": 80,
    "qwen2-vl-2b": 28,
    "qwen2-vl-7b": 28,
    "qwen2-vl-72b": 80,
    "internvl2-1b": 24,
    "internvl2-8b": 32,
    "internvl2-26b": 48,
    "internvl2-40b": 60,
    "internvl2-76b": 80,
    "cogvlm-17b": 32,
}
# The presets of 2024 this file covers; the 2025-26 families' presets are tested in their own files.
NAMES = list(LM_LAYERS)
INTERNVL_NO_SPLIT = {
    "InternVisionModel",
    "LlamaDecoderLayer",
    "InternLM2DecoderLayer",
    "Phi3DecoderLayer",
    "Qwen2DecoderLayer",
}


@pytest.fixture(scope="module")
def meta_models() -> Iterator[dict[str, nn.Module]]:
    """Full-width meta twins, built once per module (they hold no storage)."""
    yield {name: build_meta(PRESETS[name]) for name in NAMES}


@pytest.fixture(scope="module")
def tiny_models() -> Iterator[dict[str, nn.Module]]:
    yield {name: build_tiny(PRESETS[name]) for name in NAMES}


def module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


# --- presets on the meta device ------------------------------------------------------------------------------


def test_every_family_has_a_preset() -> None:
    # The generic family builds any native architecture without a preset (tests/test_families.py); "remote" and
    # "unknown" are given by spec resolution to configs no other family builds (tests/test_remote_code.py).
    assert {spec.family for spec in PRESETS.values()} == set(FAMILIES) - {"generic", "remote", "unknown"}
    assert set(LM_LAYERS) <= set(PRESETS)
    # Phi-4-multimodal's card size (5.6B) counts the LoRA adapters the native class loads apart: its language model
    # is checked against Phi-4-mini instead (tests/test_family_more.py).
    assert set(PRESETS) - set(PUBLISHED_PARAMS) == {"phi-4-multimodal"}
    assert set(PUBLISHED_PARAMS) <= set(PRESETS)


@pytest.mark.parametrize("name", NAMES)
def test_meta_twin_has_the_real_layer_count_and_no_storage(name: str, meta_models: dict[str, nn.Module]) -> None:
    model = meta_models[name]
    layout = language_model_layout(model)
    names = module_names(model)
    assert layout.num_layers == LM_LAYERS[name]
    assert f"{layout.layers}.{LM_LAYERS[name] - 1}" in names
    assert f"{layout.layers}.{LM_LAYERS[name]}" not in names
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {getattr(torch, PRESETS[name].dtype)}


@pytest.mark.parametrize("name", NAMES)
def test_meta_twin_parameter_count_is_within_1pct_of_the_published_size(
    name: str, meta_models: dict[str, nn.Module]
) -> None:
    count = sum(p.numel() for p in meta_models[name].parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_meta_build_allocates_no_weights() -> None:
    """Peak RSS of a fresh process grows by far less than one real layer of Llama-3-70B (1.7 GB in bf16)."""
    script = (
        "import resource\n"
        "from diag.twins import PRESETS, build_meta\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "build_meta(PRESETS['internvl2-76b']); build_meta(PRESETS['qwen2-vl-72b'])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    grown_kib = int(out.stdout.strip().splitlines()[-1])
    assert grown_kib < 512 * 1024


def test_internvl2_76b_names_are_upstream_names(meta_models: dict[str, nn.Module]) -> None:
    names = module_names(meta_models["internvl2-76b"])
    # The Llama language model is the installed transformers' LlamaForCausalLM, as upstream builds it.
    for expected in (
        "language_model.model.layers.79",
        "language_model.model.embed_tokens",
        "language_model.model.norm",
        "language_model.model.rotary_emb",
        "language_model.lm_head",
        "vision_model.embeddings.patch_embedding",
        "vision_model.encoder.layers.44.attn.q_norm",  # InternViT-6B-448px-V1-5: 45 blocks, qk-norm
        "mlp1.0",
        "mlp1.3",
    ):
        assert expected in names
    assert "vision_model.encoder.layers.45" not in names
    assert type(meta_models["internvl2-76b"].get_submodule("language_model")) is transformers.LlamaForCausalLM


def test_internlm2_language_model_keeps_upstream_names(meta_models: dict[str, nn.Module]) -> None:
    names = module_names(meta_models["internvl2-26b"])
    for expected in (
        "language_model.model.tok_embeddings",
        "language_model.model.layers.47.attention.wqkv",
        "language_model.model.layers.47.attention.wo",
        "language_model.model.layers.47.attention.rotary_emb",
        "language_model.model.layers.47.feed_forward.w1",
        "language_model.model.layers.47.feed_forward.w2",
        "language_model.model.layers.47.feed_forward.w3",
        "language_model.model.layers.47.attention_norm",
        "language_model.model.layers.47.ffn_norm",
        "language_model.output",
    ):
        assert expected in names
    assert "language_model.model.rotary_emb" not in names


def test_cogvlm_keeps_upstream_names(meta_models: dict[str, nn.Module]) -> None:
    model = meta_models["cogvlm-17b"]
    names = module_names(model)
    for expected in (
        "model.embed_tokens",
        "model.layers.31.self_attn.language_expert_query_key_value",
        "model.layers.31.self_attn.vision_expert_query_key_value",
        "model.layers.31.self_attn.language_expert_dense",
        "model.layers.31.self_attn.vision_expert_dense",
        "model.layers.31.self_attn.rotary_emb",
        "model.layers.31.mlp.language_mlp.gate_proj",
        "model.layers.31.mlp.vision_mlp.down_proj",
        "model.layers.31.input_layernorm",
        "model.layers.31.post_attention_layernorm",
        "model.norm",
        "model.vision.patch_embedding",
        "model.vision.transformer.layers.62.attention.query_key_value",
        "model.vision.transformer.layers.62.mlp.fc2",
        "model.vision.linear_proj",
        "lm_head",
    ):
        assert expected in names
    assert {n for n, _ in model.named_parameters()} >= {"model.vision.boi", "model.vision.eoi"}
    assert type(model.get_submodule("model.vision.transformer.layers.0")).__name__ == "TransformerLayer"


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-v1.6-34b", "qwen2-vl-72b"])
def test_hf_families_use_the_installed_transformers_names(name: str, meta_models: dict[str, nn.Module]) -> None:
    layout = language_model_layout(meta_models[name])
    if TRANSFORMERS_5:
        assert layout.layers == "model.language_model.layers"
        assert layout.head == "lm_head"
    elif name.startswith("qwen2-vl"):
        assert (layout.layers, layout.head) == ("model.layers", "lm_head")
    else:
        assert (layout.layers, layout.head) == ("language_model.model.layers", "language_model.lm_head")


@pytest.mark.parametrize("name", NAMES)
def test_layout_names_exist_in_the_built_model(name: str, meta_models: dict[str, nn.Module]) -> None:
    model: Any = meta_models[name]
    layout = language_model_layout(model)
    names = module_names(model)
    for part in (layout.layers, layout.embed, layout.norm, layout.head, *layout.vision):
        assert part in names
    assert model.get_submodule(layout.embed) is model.get_input_embeddings()
    assert model.get_submodule(layout.head) is model.get_output_embeddings()
    assert len(layout.vision) in (1, 2)
    if layout.rotary is None:
        assert not any(n.endswith(".rotary_emb") and n.count(".") == layout.layers.count(".") for n in names)
    else:
        assert layout.rotary in names


@pytest.mark.parametrize(
    ("name", "rotary", "vision"),
    [
        ("internvl2-76b", "language_model.model.rotary_emb", ("vision_model", "mlp1")),
        ("internvl2-8b", None, ("vision_model", "mlp1")),
        ("cogvlm-17b", None, ("model.vision",)),
    ],
)
def test_layout_of_remote_code_families(name: str, rotary: str | None, vision: tuple[str, ...]) -> None:
    layout = language_model_layout(PRESETS[name])
    assert layout.rotary == rotary
    assert layout.vision == vision


def test_layout_of_a_spec_is_that_of_its_meta_twin(meta_models: dict[str, nn.Module]) -> None:
    spec = PRESETS["llava-next-72b"]
    assert language_model_layout(spec) == language_model_layout(meta_models["llava-next-72b"])
    assert isinstance(language_model_layout(spec), LmLayout)


# --- no-split classes and tied weights -------------------------------------------------------------------------


def transformers_no_split(model: Any) -> set[str]:
    """What the installed transformers itself hands to accelerate for device_map="auto"."""
    getter = getattr(model, "_get_no_split_modules", None)
    return set(getter("auto")) if callable(getter) else set(model._no_split_modules)


@pytest.mark.parametrize(
    ("name", "must_hold"),
    [
        ("llava-1.5-7b", {"LlamaDecoderLayer", "CLIPEncoderLayer"}),
        ("llava-next-72b", {"Qwen2DecoderLayer", "CLIPEncoderLayer"}),
        ("qwen2-vl-7b", {"Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"}),
        ("internvl2-76b", INTERNVL_NO_SPLIT),
        ("internvl2-8b", INTERNVL_NO_SPLIT),
        ("cogvlm-17b", {"CogVLMDecoderLayer", "TransformerLayer"}),
    ],
)
def test_no_split_modules_are_what_transformers_computes(
    name: str, must_hold: set[str], meta_models: dict[str, nn.Module]
) -> None:
    model = meta_models[name]
    classes = no_split_modules(model)
    assert classes == sorted(classes)
    assert set(classes) == transformers_no_split(model)
    assert must_hold <= set(classes)
    # The decoder layer actually used is one of them, so a planned map never cuts a layer in two.
    layers = model.get_submodule(language_model_layout(model).layers)
    assert isinstance(layers, nn.ModuleList)
    assert type(layers[0]).__name__ in classes


def test_cogvlm_no_split_is_exactly_upstream_list(meta_models: dict[str, nn.Module]) -> None:
    assert no_split_modules(meta_models["cogvlm-17b"]) == ["CogVLMDecoderLayer", "TransformerLayer"]


def test_internvl_vision_model_is_kept_whole(meta_models: dict[str, nn.Module]) -> None:
    model = meta_models["internvl2-76b"]
    assert type(model.get_submodule("vision_model")).__name__ in no_split_modules(model)


def test_no_split_modules_of_a_plain_module_is_its_attribute() -> None:
    module = nn.Linear(2, 2)
    assert no_split_modules(module) == []
    module._no_split_modules = ["B", "A"]  # type: ignore[assignment]
    assert no_split_modules(module) == ["A", "B"]


@pytest.mark.parametrize("build", [build_meta, build_tiny], ids=["meta", "tiny"])
@pytest.mark.parametrize(
    ("name", "tied"),
    [("qwen2-vl-2b", True), ("qwen2-vl-7b", False), ("llava-1.5-7b", False), ("internvl2-1b", False)],
)
def test_weights_are_tied_where_upstream_ties_them(name: str, tied: bool, build: Any) -> None:
    model = build(PRESETS[name])
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied


# --- tiny twins ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_has_the_meta_twins_tree_with_real_cpu_weights(
    name: str, meta_models: dict[str, nn.Module], tiny_models: dict[str, nn.Module]
) -> None:
    tiny, meta = tiny_models[name], meta_models[name]
    assert module_names(tiny) == module_names(meta)
    assert {n for n, _ in tiny.named_parameters()} == {n for n, _ in meta.named_parameters()}
    assert no_split_modules(tiny) == no_split_modules(meta)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in tiny.parameters())
    assert not any(b.is_meta for b in tiny.buffers())
    assert not tiny.training
    assert sum(p.numel() for p in tiny.parameters()) < 5_000_000


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_runs_a_forward_pass(name: str, tiny_models: dict[str, nn.Module]) -> None:
    model = tiny_models[name]
    inputs = example_inputs(PRESETS[name], model)
    assert all(t.device.type == "cpu" for t in inputs.values())
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [n for n in NAMES if PRESETS[n].family != "internvl-chat"])
def test_tiny_twin_generates_two_new_tokens(name: str, tiny_models: dict[str, nn.Module]) -> None:
    model = tiny_models[name]
    inputs = example_inputs(PRESETS[name], model)
    output = model.generate(**inputs, max_new_tokens=2, do_sample=False)  # type: ignore[operator]
    prompt = inputs["input_ids"]
    assert output.shape == (1, prompt.shape[1] + 2)
    assert torch.equal(output[:, : prompt.shape[1]], prompt)


@pytest.mark.parametrize("name", [n for n in NAMES if PRESETS[n].family == "internvl-chat"])
def test_internvl_generates_through_the_inner_language_model(
    name: str, tiny_models: dict[str, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    model: Any = tiny_models[name]
    inputs = example_inputs(PRESETS[name], model)
    calls: list[dict[str, Any]] = []
    inner_generate = model.language_model.generate

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return inner_generate(**kwargs)

    monkeypatch.setattr(model.language_model, "generate", spy)
    output = model.generate(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=2,
        do_sample=False,
    )
    # Upstream hands the inner model embeddings only, so generate returns just the new tokens.
    assert output.shape == (1, 2)
    assert len(calls) == 1 and "input_ids" not in calls[0]
    embeds = calls[0]["inputs_embeds"]
    selected = inputs["input_ids"][0] == model.img_context_token_id
    with torch.no_grad():
        vit = model.extract_feature(inputs["pixel_values"]).reshape(-1, embeds.shape[-1])
    assert torch.allclose(embeds[0, selected], vit)
    assert torch.equal(embeds[0, ~selected], model.get_input_embeddings()(inputs["input_ids"])[0, ~selected])


def test_internvl_forward_merges_image_embeddings_before_the_language_model(tiny_models: dict[str, nn.Module]) -> None:
    model: Any = tiny_models["internvl2-8b"]
    inputs = example_inputs(PRESETS["internvl2-8b"], model)
    with torch.no_grad():
        merged = model.get_input_embeddings()(inputs["input_ids"]).clone()
        selected = inputs["input_ids"] == model.img_context_token_id
        merged[selected] = model.extract_feature(inputs["pixel_values"]).reshape(-1, merged.shape[-1])
        expected = model.language_model(inputs_embeds=merged, attention_mask=inputs["attention_mask"]).logits
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)


def test_internvl_chat_tokenises_generates_and_decodes(tiny_models: dict[str, nn.Module]) -> None:
    model: Any = tiny_models["internvl2-76b"]
    tokenizer = TwinTokenizer()
    pixel_values = example_inputs(PRESETS["internvl2-76b"], model)["pixel_values"]
    answer = model.chat(tokenizer, pixel_values, "What is it?", {"max_new_tokens": 2, "do_sample": False})
    assert len(answer) == 2
    assert tokenizer.seen.count(255) == model.num_image_token


def test_cogvlm_takes_upstream_images_lists_and_stacked_pixel_values(tiny_models: dict[str, nn.Module]) -> None:
    model: Any = tiny_models["cogvlm-17b"]
    inputs = example_inputs(PRESETS["cogvlm-17b"], model)
    pixel_values = inputs.pop("pixel_values")
    with torch.no_grad():
        stacked = model(**inputs, pixel_values=pixel_values).logits
        listed = model(**inputs, images=[[pixel_values[0]]]).logits
        text_only = model(**inputs).logits
    assert torch.equal(stacked, listed)
    assert not torch.allclose(stacked, text_only)


@pytest.mark.parametrize("name", ["internvl2-8b", "llava-1.5-7b", "cogvlm-17b"])
def test_tiny_build_is_deterministic_per_seed(name: str) -> None:
    first, again, other = (build_tiny(PRESETS[name], seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_tiny_build_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(PRESETS["llava-1.5-7b"], seed=7)
    assert torch.equal(torch.rand(3), expected)


# --- resolving --model and pretrained= -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["internvl2-76b", "InternVL2-76B", " internvl2-76b "])
def test_presets_resolve_by_name_case_insensitively(value: str) -> None:
    assert resolve_model(value) is PRESETS["internvl2-76b"]


def test_a_hub_id_resolves_to_its_preset() -> None:
    assert resolve_model("OpenGVLab/InternVL2-Llama3-76B").name == "internvl2-76b"


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_a_config_json_file_resolves_and_builds_like_its_preset(tmp_path: Path) -> None:
    config = {**PRESETS["internvl2-8b"].config, "torch_dtype": "bfloat16"}
    path = write_config(tmp_path / "InternVL2-8B", config)
    spec = resolve_model(str(path))
    assert (spec.name, spec.family, spec.dtype) == (str(path), "internvl-chat", "bfloat16")
    count = sum(p.numel() for p in build_meta(spec).parameters())
    assert count == sum(p.numel() for p in build_meta(PRESETS["internvl2-8b"]).parameters())


@pytest.mark.parametrize(
    ("config", "family"),
    [
        ({"model_type": "llava_next"}, "llava-next"),
        ({"model_type": "qwen2_vl"}, "qwen2-vl"),
        ({"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}, "internvl-chat"),
        ({"architectures": ["CogVLMForCausalLM"]}, "cogvlm"),
        ({"architectures": ["LlavaForConditionalGeneration"]}, "llava"),
    ],
)
def test_a_model_folder_resolves_by_model_type_or_architectures(
    tmp_path: Path, config: dict[str, Any], family: str
) -> None:
    write_config(tmp_path / "model", config)
    assert resolve_model(str(tmp_path / "model")).family == family


def test_a_llava_repository_config_resolves_to_the_hf_llava_tree(tmp_path: Path) -> None:
    """liuhaotian/llava-v1.5-7b's config.json: a flat Llama config with the mm_* fields."""
    text = {k: v for k, v in PRESETS["llava-1.5-7b"].config["text_config"].items() if k != "architectures"}
    repo_config = {
        **text,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "vocab_size": 32000,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "image_aspect_ratio": "pad",
        "torch_dtype": "float16",
    }
    spec = resolve_model(str(write_config(tmp_path / "llava-v1.5-7b", repo_config).parent))
    assert (spec.family, spec.dtype) == ("llava", "float16")
    assert sum(p.numel() for p in build_meta(spec).parameters()) == pytest.approx(7.06e9, rel=0.01)
    tiny = build_tiny(spec)
    with torch.no_grad():
        assert tiny(**example_inputs(spec, tiny)).logits.shape[-1] == 256


def test_an_internvl_config_with_a_phi3_language_model_builds_and_runs(tmp_path: Path) -> None:
    """InternVL2-4B: InternViT-300M + Phi-3-mini (upstream's copy of transformers' Phi-3), 4.15B published."""
    phi3 = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32020,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    }
    config = {**PRESETS["internvl2-8b"].config, "llm_config": phi3}
    spec = resolve_model(str(write_config(tmp_path / "InternVL2-4B", config)))
    meta = build_meta(spec)
    assert sum(p.numel() for p in meta.parameters()) == pytest.approx(4.15e9, rel=0.01)
    assert "Phi3DecoderLayer" in no_split_modules(meta)
    tiny = build_tiny(spec)
    inputs = example_inputs(spec, tiny)
    with torch.no_grad():
        assert tiny(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    output = tiny.generate(  # type: ignore[operator]
        pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], max_new_tokens=2, do_sample=False
    )
    assert output.shape == (1, 2)


def test_an_internvl_config_with_an_unknown_language_model_is_unknown(tmp_path: Path) -> None:
    config = {**PRESETS["internvl2-8b"].config, "llm_config": {"architectures": ["GemmaForCausalLM"]}}
    with pytest.raises(UnknownModel, match="GemmaForCausalLM"):
        resolve_model(str(write_config(tmp_path / "m", config)))


def test_a_qwen2_vl_config_saved_by_transformers_5_builds_the_same_model(tmp_path: Path) -> None:
    """transformers 5 nests the text fields in `text_config`; 4.45 must not fall back to its defaults."""
    flat = dict(PRESETS["qwen2-vl-7b"].config)
    text_keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    text_keys += ["num_key_value_heads", "vocab_size", "rope_scaling", "rope_theta"]
    nested = {k: v for k, v in flat.items() if k not in text_keys}
    nested["text_config"] = {"model_type": "qwen2_vl_text", **{k: flat[k] for k in text_keys}}
    spec = resolve_model(str(write_config(tmp_path / "Qwen2-VL-7B-Instruct", nested)))
    assert sum(p.numel() for p in build_meta(spec).parameters()) == pytest.approx(8.29e9, rel=0.01)
    tiny = build_tiny(spec)
    with torch.no_grad():
        assert torch.isfinite(tiny(**example_inputs(spec, tiny)).logits).all()


def test_an_unknown_model_type_names_the_supported_families(tmp_path: Path) -> None:
    # A class neither a family's nor the installed transformers' (the generic family builds those), of a model_type
    # transformers knows (an unknown model_type is MODEL-002: tests/test_remote_code.py).
    path = write_config(tmp_path / "m", {"model_type": "llama", "architectures": ["Blip3Model"]})
    with pytest.raises(UnknownModel) as excinfo:
        resolve_model(str(path))
    message = str(excinfo.value)
    assert "\n" not in message
    assert "'llama'" in message and "Blip3Model" in message
    assert all(family in message for family in FAMILIES)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json {", "config.json: not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        (b"\xff\xfe\x00", "not UTF-8 text"),
    ],
    ids=["not-json", "json-list", "binary"],
)
def test_an_unreadable_config_is_a_one_line_unknown_model(tmp_path: Path, content: str | bytes, words: str) -> None:
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UnknownModel) as excinfo:
        resolve_model(str(path))
    assert "\n" not in str(excinfo.value)
    assert words in str(excinfo.value)


@pytest.mark.parametrize("value", ["gpt-5-vision", "/no/such/folder", ""])
def test_an_unknown_name_lists_the_presets(value: str) -> None:
    with pytest.raises(UnknownModel) as excinfo:
        resolve_model(value)
    assert "\n" not in str(excinfo.value)
    assert "internvl2-76b" in str(excinfo.value) and "cogvlm" in str(excinfo.value)


def test_a_folder_without_config_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_unknown_model_is_a_value_error() -> None:
    assert issubclass(UnknownModel, ValueError)


@pytest.mark.parametrize(
    ("pretrained", "preset"),
    [
        ("OpenGVLab/InternVL2-Llama3-76B", "internvl2-76b"),
        ("opengvlab/internvl2-llama3-76b", "internvl2-76b"),
        ("OpenGVLab/InternVL2-8B", "internvl2-8b"),
        ("OpenGVLab/InternVL2-26B", "internvl2-26b"),
        ("OpenGVLab/InternVL2-40B", "internvl2-40b"),
        ("llava-hf/llava-1.5-7b-hf", "llava-1.5-7b"),
        ("liuhaotian/llava-v1.5-7b", "llava-1.5-7b"),
        ("liuhaotian/llava-v1.5-13b", "llava-1.5-13b"),
        ("lmms-lab/llava-v1.6-34b", "llava-v1.6-34b"),
        ("llava-hf/llava-v1.6-34b-hf", "llava-v1.6-34b"),
        ("lmms-lab/llava-next-72b", "llava-next-72b"),
        ("llava-hf/llava-next-72b-hf", "llava-next-72b"),
        ("Qwen/Qwen2-VL-7B-Instruct", "qwen2-vl-7b"),
        ("Qwen/Qwen2-VL-72B-Instruct", "qwen2-vl-72b"),
        ("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b"),
        ("THUDM/cogvlm-chat-hf", "cogvlm-17b"),
        ("/models/InternVL2-Llama3-76B", "internvl2-76b"),
        ("/data/ckpt/llava-v1.6-34b/", "llava-v1.6-34b"),
        ("~/.cache/huggingface/hub/models--OpenGVLab--InternVL2-Llama3-76B/snapshots/0a1b2c3", "internvl2-76b"),
        ("internvl2-76b", "internvl2-76b"),
    ],
)
def test_checkpoint_ids_map_to_presets(pretrained: str, preset: str) -> None:
    spec = preset_for_checkpoint(pretrained)
    assert spec is not None and spec.name == preset


@pytest.mark.parametrize("pretrained", ["", "meta-llama/Llama-3-70B", "/models/my-finetune", "OpenGVLab/InternVL2-4B"])
def test_unknown_checkpoints_map_to_none(pretrained: str) -> None:
    assert preset_for_checkpoint(pretrained) is None


def test_presets_are_read_only() -> None:
    spec = PRESETS["llava-1.5-7b"]
    with pytest.raises(TypeError):
        spec.config["model_type"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["x"] = spec  # type: ignore[index]
    assert isinstance(spec, ModelSpec) and spec.checkpoints
