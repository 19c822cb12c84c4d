"""Preset fields that were checked against a public copy of the checkpoint's config.json (the sources are named
beside each preset in diag/twins/presets_*.py). A later edit that drifts from them fails here, by name and path.
Pure dictionary checks: nothing is built."""

from __future__ import annotations

from typing import Any

import pytest

from diag.twins import PRESETS

# preset -> {dotted path in the preset's config: the published value}
CHECKED: dict[str, dict[str, Any]] = {
    "qwen2.5-vl-3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                      "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                      "max_window_layers": 70, "vision_config.out_hidden_size": 2048},
    "qwen2.5-vl-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                      "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
                      "vision_config.intermediate_size": 3420, "vision_config.depth": 32,
                      "vision_config.fullatt_block_indexes": [7, 15, 23, 31], "vision_config.window_size": 112},
    "qwen2.5-vl-32b": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                       "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
                       "vision_config.intermediate_size": 3456, "vision_config.out_hidden_size": 5120},
    # Not the AWQ repo's 29696 (padded for tensor parallelism): 29568 is what gives the card's 73.4B.
    "qwen2.5-vl-72b": {"hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                       "num_attention_heads": 64, "num_key_value_heads": 8,
                       "vision_config.intermediate_size": 3456, "vision_config.out_hidden_size": 8192},
    "qwen3-vl-32b": {"text_config.hidden_size": 5120, "text_config.intermediate_size": 25600,
                     "text_config.num_hidden_layers": 64, "text_config.num_attention_heads": 64,
                     "text_config.num_key_value_heads": 8, "text_config.head_dim": 128,
                     "text_config.rope_theta": 5000000, "vision_config.depth": 27,
                     "vision_config.intermediate_size": 4304, "vision_config.deepstack_visual_indexes": [8, 16, 24]},
    "smolvlm2-2.2b": {"image_token_id": 49190, "scale_factor": 3, "text_config.hidden_size": 2048,
                      "text_config.intermediate_size": 8192, "text_config.num_hidden_layers": 24,
                      "text_config.head_dim": 64, "text_config.num_attention_heads": 32,
                      "text_config.num_key_value_heads": 32, "text_config.max_position_embeddings": 8192},
    "idefics3-8b": {"image_token_id": 128257, "scale_factor": 2, "text_config.hidden_size": 4096,
                    "text_config.intermediate_size": 14336, "text_config.max_position_embeddings": 131072,
                    "text_config.eos_token_id": [128001, 128008, 128009]},
    "internvl3.5-8b": {"llm_config.hidden_size": 4096, "llm_config.intermediate_size": 12288,
                       "llm_config.num_hidden_layers": 36, "llm_config.head_dim": 128,
                       "llm_config.max_position_embeddings": 40960, "llm_config.vocab_size": 151936},
    "internvl3-8b": {"llm_config.vocab_size": 151674, "llm_config.intermediate_size": 18944,
                     "llm_config.rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "internvl3-78b": {"llm_config.vocab_size": 151674, "llm_config.hidden_size": 8192,
                      "llm_config.intermediate_size": 29568,
                      "llm_config.rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "internvl3-8b-hf": {"image_token_id": 151667, "image_seq_length": 256, "text_config.vocab_size": 151674,
                        "text_config.rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "glm-4.1v-9b": {"text_config.hidden_size": 4096, "text_config.intermediate_size": 13696,
                    "text_config.num_hidden_layers": 40, "text_config.num_key_value_heads": 2,
                    "text_config.vocab_size": 151552, "text_config.max_position_embeddings": 65536,
                    "text_config.rope_theta": 10000.0, "text_config.partial_rotary_factor": 0.5,
                    "text_config.eos_token_id": [151329, 151336, 151338, 151348], "vision_config.depth": 24,
                    "vision_config.hidden_size": 1536, "vision_config.num_heads": 12,
                    "vision_config.intermediate_size": 13696, "vision_config.out_hidden_size": 4096},
    "gemma-3-27b": {"text_config.hidden_size": 5376, "text_config.intermediate_size": 21504,
                    "text_config.num_hidden_layers": 62, "text_config.num_attention_heads": 32,
                    "text_config.num_key_value_heads": 16, "text_config.head_dim": 128,
                    "text_config.query_pre_attn_scalar": 168, "vision_config.num_hidden_layers": 27,
                    "vision_config.image_size": 896, "mm_tokens_per_image": 256},
    "llama-4-maverick": {"text_config.hidden_size": 5120, "text_config.intermediate_size": 8192,
                         "text_config.intermediate_size_mlp": 16384, "text_config.num_local_experts": 128,
                         "text_config.interleave_moe_layer_step": 2, "text_config.use_qk_norm": False,
                         "text_config.vocab_size": 202048, "text_config.max_position_embeddings": 1048576},
    "phi-4-multimodal": {"num_attention_heads": 24, "num_key_value_heads": 8, "audio_config.hidden_size": 1024,
                         "audio_config.intermediate_size": 1536, "audio_config.num_blocks": 24},
}  # fmt: skip


def _at(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        value = value[key]
    return value


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_a_checked_preset_holds_the_published_values(name: str) -> None:
    config = dict(PRESETS[name].config)
    wrong = {path: _at(config, path) for path, value in CHECKED[name].items() if _at(config, path) != value}
    assert wrong == {}, f"{name}: these fields differ from the published config.json: {wrong}"


def test_every_checked_name_is_a_preset() -> None:
    assert set(CHECKED) <= set(PRESETS)
