"""Qwen2.5-VL and Qwen3-VL presets: published sizes, real depth, meta builds, tiny twins run image and video over
several virtual GPUs, and a split vision block fails with its cause, on the stacks whose transformers has the
classes (transformers 4.45.2 has Qwen2-VL only: the others skip there, with the family's own reason)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import transformers

from diag.samedevice import run as run_module
from diag.samedevice.verify import check_run, forced_map
from diag.twins import PRESETS, build_meta, build_tiny, language_model_layout, no_split_modules, resolve_model
from diag.twins.build import tiny_config
from diag.twins.families import family_named
from diag.twins.presets import PUBLISHED_PARAMS
from diag.twins.presets_qwen import PRESET_TABLE

# Language-model decoder layers (the published config.json files).
LM_LAYERS = {
    "qwen2.5-vl-3b": 36,
    "qwen2.5-vl-7b": 28,
    "qwen2.5-vl-32b": 64,
    "qwen2.5-vl-72b": 80,
    "qwen3-vl-2b": 28,
    "qwen3-vl-4b": 36,
    "qwen3-vl-8b": 36,
    "qwen3-vl-32b": 64,
    "qwen3-vl-30b-a3b": 48,
    "qwen3-vl-235b-a22b": 94,
}
NAMES = list(LM_LAYERS)
# When the classes came to transformers (the reason unavailable() gives names it).
SINCE = {"qwen2.5-vl": "4.49", "qwen3-vl": "4.57", "qwen3-vl-moe": "4.57"}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def needs_class(name: str) -> None:
    """Skip on a stack whose transformers lacks the preset's class, after checking the family says exactly that."""
    spec = PRESETS[name]
    reason = family_named(spec.family).unavailable(spec.config)
    if reason is None:
        return
    assert f"the installed transformers {transformers.__version__} has no " in reason
    assert f"model_type {spec.config['model_type']!r}" in reason
    assert f"added in transformers {SINCE[spec.family]}" in reason
    assert reason.count("\n") == 0
    pytest.skip(reason)


def test_the_group_is_merged_with_published_sizes() -> None:
    assert set(PRESET_TABLE) == set(NAMES) <= set(PRESETS)
    assert all(name in PUBLISHED_PARAMS for name in NAMES)
    for name in NAMES:
        assert PRESETS[name].family == family_named(PRESETS[name].family).name
        assert all(c.startswith("Qwen/Qwen") for c in PRESETS[name].checkpoints)


@pytest.mark.parametrize(
    ("hub_id", "name"),
    [("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-7b"), ("qwen/qwen3-vl-8b-thinking", "qwen3-vl-8b"),
     ("Qwen/Qwen3-VL-235B-A22B-Instruct", "qwen3-vl-235b-a22b"),
     ("/models/Qwen3-VL-30B-A3B-Instruct", "qwen3-vl-30b-a3b")],
)  # fmt: skip
def test_hub_ids_resolve_to_the_presets(hub_id: str, name: str) -> None:
    from diag.twins import preset_for_checkpoint

    spec = preset_for_checkpoint(hub_id)
    assert spec is not None and spec.name == name


def test_an_unavailable_class_is_a_one_line_reason_naming_the_release() -> None:
    """On every stack: a class transformers lacks gives the reason the failure check quotes."""
    family = family_named("qwen3-vl")
    config = {**PRESETS["qwen3-vl-8b"].config, "architectures": ["Qwen3VLForConditionalGeneration"]}
    original = family.loader
    try:
        type(family).loader = "Qwen3VLNoSuchClassForConditionalGeneration"
        reason = family.unavailable(config)
    finally:
        type(family).loader = original
    assert reason is not None and "Qwen3VLNoSuchClassForConditionalGeneration" in reason and "4.57" in reason
    with pytest.raises(ValueError, match="has no"):
        type(family).loader = "Qwen3VLNoSuchClassForConditionalGeneration"
        try:
            family.build(config)
        finally:
            type(family).loader = original


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_has_the_real_depth_and_the_published_size(name: str) -> None:
    needs_class(name)
    model = build_meta(PRESETS[name])
    layout = language_model_layout(model)
    assert layout.num_layers == LM_LAYERS[name]
    assert all(p.is_meta for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight  # type: ignore[union-attr]
    assert tied is bool(PRESETS[name].config.get("tie_word_embeddings"))
    classes = no_split_modules(model)
    layers = model.get_submodule(layout.layers)
    assert isinstance(layers, torch.nn.ModuleList) and type(layers[0]).__name__ in classes
    assert any(c.endswith("VisionBlock") for c in classes)


def test_the_tiny_configs_keep_mrope_window_deepstack_and_experts() -> None:
    qwen25 = tiny_config(PRESETS["qwen2.5-vl-72b"])
    assert qwen25["rope_scaling"]["mrope_section"] == [2, 3, 3]
    assert qwen25["hidden_size"] // qwen25["num_attention_heads"] == 2 * sum([2, 3, 3])
    assert qwen25["vision_config"]["fullatt_block_indexes"] == [7, 15, 23, 31]
    assert qwen25["vision_config"]["window_size"] == 112 and qwen25["vision_config"]["depth"] == 32
    assert qwen25["vision_config"]["out_hidden_size"] == qwen25["hidden_size"]
    assert qwen25["num_hidden_layers"] == 80
    qwen3 = tiny_config(PRESETS["qwen3-vl-235b-a22b"])
    text = qwen3["text_config"]
    assert text["rope_scaling"]["mrope_section"] == [6, 5, 5] and text["head_dim"] == 32
    assert text["rope_scaling"]["mrope_interleaved"] is True
    assert qwen3["vision_config"]["deepstack_visual_indexes"] == [8, 16, 24] and qwen3["vision_config"]["depth"] == 27
    assert text["num_hidden_layers"] == 94 and text["decoder_sparse_step"] == 1 and text["mlp_only_layers"] == []
    assert text["num_experts_per_tok"] <= text["num_experts"] <= 128
    assert max(qwen3[k] for k in ("image_token_id", "video_token_id")) < text["vocab_size"] == 256


@pytest.mark.parametrize("name", ["qwen3-vl-30b-a3b", "qwen3-vl-235b-a22b"])
def test_tiny_moe_twin_has_the_real_tree(name: str) -> None:
    """Experts are shrunk only where a layer's experts are one module, so the tiny tree is the meta tree."""
    needs_class(name)
    tiny, meta = build_tiny(PRESETS[name]), build_meta(PRESETS[name])
    assert {n for n, _ in tiny.named_modules()} == {n for n, _ in meta.named_modules()}
    assert no_split_modules(tiny) == no_split_modules(meta)
    assert sum(p.numel() for p in tiny.parameters()) < 15_000_000


@pytest.mark.parametrize("name", ["qwen2-vl-7b", *NAMES])
def test_tiny_twin_runs_image_and_video_over_four_virtual_gpus(name: str, recorded_stages: list[str]) -> None:
    needs_class(name)
    spec = PRESETS[name]
    meta = build_meta(spec)
    device_map = forced_map(meta, 4, spec.family)
    assert {str(v) for v in device_map.values()} == {"0", "1", "2", "3"}
    result = run_module.run_twin(spec, device_map, simulated_gpus=4)
    assert result.ok, result.error
    assert recorded_stages == ["forward (image)", "generate (image)", "forward (video)", "generate (video)"]


@pytest.mark.parametrize("name", ["qwen2.5-vl-7b", "qwen3-vl-8b"])
def test_a_split_vision_block_fails_with_its_cause_and_the_whole_block_fixes_it(name: str) -> None:
    needs_class(name)
    spec = PRESETS[name]
    meta = build_meta(spec)
    device_map = dict(forced_map(meta, 2, spec.family))
    vision = next(v for v in language_model_layout(meta).vision if v.endswith("visual"))
    block = f"{vision}.blocks.3"
    owner = next(k for k in device_map if vision == k or vision.startswith(k + ".") or k.startswith(vision + "."))
    base = device_map.pop(owner) if owner == vision or vision.startswith(owner + ".") else device_map[owner]
    children = [n for n, _ in meta.named_children()] if owner == "" else []
    assert not children
    names = {n for n, _ in meta.named_modules()}
    for sub in (n for n in names if n.startswith(f"{vision}.") and n.count(".") == vision.count(".") + 1):
        device_map.setdefault(sub, base)
    device_map.pop(f"{vision}.blocks", None)
    for index in range(len(meta.get_submodule(f"{vision}.blocks"))):  # type: ignore[arg-type]
        device_map[f"{vision}.blocks.{index}"] = base
    device_map.pop(block)
    device_map[f"{block}.norm1"] = device_map[f"{block}.attn"] = base
    device_map[f"{block}.norm2"] = device_map[f"{block}.mlp"] = 1 - int(base)
    verdict = check_run(spec, device_map, simulated_gpus=2, meta_model=meta)
    assert verdict.result.stage == "forward (image)" and verdict.result.input_set == "image"
    assert verdict.result.cross_device
    assert verdict.cause is not None and verdict.cause.code == "FWD-004"
    assert verdict.cause.modules == (block,) and verdict.cause.no_split_class is not None
    assert verdict.cause.no_split_class.endswith("VisionBlock")
    assert verdict.verified and verdict.fixed_map is not None and verdict.fixed_map[block] == base


def test_a_cached_qwen2_5_vl_checkpoint_resolves_to_its_family(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """pretrained=Qwen/Qwen2.5-VL-7B-Instruct from a hub cache laid out as huggingface_hub writes it, offline."""
    import json

    for name in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--Qwen--Qwen2.5-VL-7B-Instruct"
    revision = "89abcdef" * 5
    config = {**PRESETS["qwen2.5-vl-7b"].config, "num_hidden_layers": 27, "torch_dtype": "bfloat16"}
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "c0ffee").write_text(json.dumps(config))
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "config.json").symlink_to("../../blobs/c0ffee")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    spec = resolve_model("Qwen/Qwen2.5-VL-7B-Instruct")
    assert (spec.source, spec.family, spec.config["num_hidden_layers"]) == ("hub-cache", "qwen2.5-vl", 27)
