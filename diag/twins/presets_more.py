"""Presets of 2025-26: LLaVA-OneVision, Idefics3/SmolVLM2, InternVL3 `-hf`, GLM-4.1V, Phi-4-multimodal, and the
remote-code InternVL2.5 / InternVL3 / InternVL3.5.

Each config holds the fields of the published config.json that shape the module tree and the parameter sizes
(sources named beside each). Token ids, rope settings and other fields that steer values but not shapes are kept
where they are published and small. `PUBLISHED_PARAMS` is the size the model card (or the hub page's parameter
count) states; the full-width meta twin must match it within 1%.
"""

from __future__ import annotations

import copy
from typing import Any

from diag.twins.presets_shared import INTERN_VIT_6B as _INTERN_VIT_6B
from diag.twins.presets_shared import INTERN_VIT_300M as _INTERN_VIT_300M
from diag.twins.presets_shared import lm_shape

Config = dict[str, Any]


def _qwen2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, *, tie: bool) -> Config:
    # Qwen/Qwen2-*-Instruct and Qwen/Qwen2.5-*-Instruct config.json (Qwen2ForCausalLM).
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        **lm_shape(hidden, intermediate, layers, heads, kv_heads, vocab),
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tie,
        "use_sliding_window": False,
        "max_window_layers": layers,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }


# --- LLaVA-OneVision ------------------------------------------------------------------------------------------
# transformers src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py: the LM is
# Qwen/Qwen2-{0.5B,7B,72B}-Instruct with <image> and <video> added and the vocabulary padded to a multiple of 64
# (151936 + 2 -> 152000; 152064 + 2 -> 152128); the tower is SigLIP-so400m at 384 px with its last layer dropped
# (26 layers, no head); `image_grid_pinpoints` is every 1x1 .. 6x6 grid of 384 px tiles; anyres_max_9.
_SIGLIP_384_OV: Config = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "num_hidden_layers": 26,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
_OV_PINPOINTS = [[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)]


def _llava_onevision(text: Config) -> Config:
    return {
        "model_type": "llava_onevision",
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "text_config": text,
        "vision_config": dict(_SIGLIP_384_OV),
        "image_token_index": 151646,
        "video_token_index": 151647,
        "image_grid_pinpoints": copy.deepcopy(_OV_PINPOINTS),
        "projector_hidden_act": "gelu",
        "use_image_newline_parameter": True,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "tie_word_embeddings": bool(text["tie_word_embeddings"]),
    }


# --- Idefics3 / SmolVLM2 --------------------------------------------------------------------------------------
# HuggingFaceM4/Idefics3-8B-Llama3/config.json: Llama-3.1-8B-Instruct (vocab 128256 + 3 added tokens, <image> =
# 128257) and SigLIP-so400m at 364 px (27 layers), pixel shuffle 2 -> 169 tokens per 364 px tile.
# Checked against https://huggingface.co/HuggingFaceM4/Idefics3-8B-Llama3/blob/92a708af3b96e7fe9aeac5d439a1f64083868a05/
# config.json (its head: <image> 128257, scale_factor 2, 4096/14336, 131072 positions, eos [128001, 128008,
# 128009]) and generation_config.json at e493ce0 (eos 128258 = the third added token, so vocab >= 128259). The
# vision fields and the text heads/kv-heads/vocab were not in the fetched excerpt; they give 8.462B against the
# four safetensors shards' 16.93 GB in bf16 (8.46B).
_IDEFICS3_8B: Config = {
    "model_type": "idefics3",
    "architectures": ["Idefics3ForConditionalGeneration"],
    "image_token_id": 128257,
    "scale_factor": 2,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128259,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "pad_token_id": 128002,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 364,
        "patch_size": 14,
    },
}

# HuggingFaceTB/SmolVLM2-2.2B-Instruct/config.json: SmolLM2-1.7B (24 layers, width 2048, vocab 49280 with the
# added image/video tokens, <image> = 49190, untied head) and SigLIP-so400m at 384 px (27 layers), pixel shuffle 3
# -> 81 tokens per 384 px tile.
# Checked against https://huggingface.co/HuggingFaceTB/SmolVLM2-2.2B-Instruct/blame/main/config.json (commit f33043d;
# its head: smolvlm, <image> 49190, scale_factor 3, text head_dim 64 / 2048 / 8192 / 24 layers / 8192 positions,
# pad 2, no num_attention_heads, so LlamaConfig's 32 with 32 key-value heads) and generation_config.json (eos 49279,
# so vocab >= 49280). Not in the fetched excerpt, so not verified: vocab 49280 exactly, rope_theta 130000 (that is
# HuggingFaceTB/SmolLM2-1.7B-Instruct's, as copies of its config.json show), the vision fields; together they give
# 2.2468B against the two shards' 8.99 GB in float32 (2.2475B).
_SMOLVLM2_2B: Config = {
    "model_type": "smolvlm",
    "architectures": ["SmolVLMForConditionalGeneration"],
    "image_token_id": 49190,
    "scale_factor": 3,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "architectures": ["VLlama3ForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 64,
        "vocab_size": 49280,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05,
        "rope_theta": 130000,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
    },
}

# --- InternVL3 (-hf native ports, transformers' InternVLForConditionalGeneration) ------------------------------
# OpenGVLab/InternVL3-8B-hf/config.json (quoted in vllm-project/vllm#17634): <IMG_CONTEXT> = 151667, 256 tokens
# per 448 px tile, pixel shuffle 0.5, Qwen2.5 LM with vocab 151674; InternViT-300M-448px-V2_5 as internvl_vision.
# The -hf layout (image_token_id 151667, image_seq_length 256, downsample 0.5, gelu projector, Qwen2 text_config
# with vocab 151674 and dynamic rope factor 2.0) checked against https://huggingface.co/hf-internal-testing/
# tiny-processor-internvl/blame/main/config.json (46d1c84, InternVL3-1B-hf's layout); the 8B/78B text widths against
# Ascend/MindSpeed-MM examples/internvl3/model_8B.json and model_78B.json (tag 2.3.0, gitcode.com).
_INTERNVL_VISION_300M: Config = {
    "model_type": "internvl_vision",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": [448, 448],
    "patch_size": [14, 14],
    "attention_bias": True,
    "use_qk_norm": False,
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-06,
    "layer_scale_init_value": 0.1,
    "hidden_act": "gelu",
    "use_absolute_position_embeddings": True,
    "use_mean_pooling": True,
}
# OpenGVLab/InternViT-6B-448px-V2_5/config.json in the -hf form: 45 layers, width 3200, RMSNorm, qk-norm, no bias.
_INTERNVL_VISION_6B: Config = {
    **_INTERNVL_VISION_300M,
    "hidden_size": 3200,
    "intermediate_size": 12800,
    "num_hidden_layers": 45,
    "num_attention_heads": 25,
    "attention_bias": False,
    "use_qk_norm": True,
    "norm_type": "rms_norm",
}


def _internvl3_lm(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> Config:
    # InternVL3's Qwen2.5 LMs: vocab 151674 (InternVL's added tokens), dynamic rope factor 2.0 (sources above).
    return {**_qwen2(hidden, intermediate, layers, heads, kv_heads, 151674, tie=False),
            "rope_scaling": {"type": "dynamic", "factor": 2.0}}  # fmt: skip


def _internvl_hf(vision: Config, text: Config) -> Config:
    return {
        "model_type": "internvl",
        "architectures": ["InternVLForConditionalGeneration"],
        "vision_config": dict(vision),
        "text_config": text,
        "image_token_id": 151667,
        "image_seq_length": 256,
        "downsample_ratio": 0.5,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


# --- GLM-4.1V ---------------------------------------------------------------------------------------------------
# zai-org/GLM-4.1V-9B-Thinking/config.json: GLM-4 9B LM (40 layers, width 4096, 2 key/value heads, half-rotary
# M-RoPE sections 8/12/12, vocab 151552) and a 24-block ViT (width 1536) at 336 px, patch 14, merge 2.
# The zai-org file itself was not in the searched material. Checked against the full-width copy in
# https://huggingface.co/hf-internal-testing/tiny-processor-glm4v/blob/main/config.json (transformers 4.57.1; text
# 4096/13696/40/32/2, vocab 151552, 65536 positions, theta 10000, half rotary, mrope 8/12/12, attention bias, eos
# [151329, 151336, 151338, 151348]; ViT 1536/24/12 heads/13696/336 px), against a fine-tune's copy (huggingface.co/
# minglanga/GeoSolver, config.json: the same fields), and against transformers 5.24's Glm4v*Config defaults, which
# configuration_glm4v.py documents as zai-org/GLM-4.1V-9B-Thinking's. Size matches the hub's 10.3B.
_GLM41V_9B: Config = {
    "model_type": "glm4v",
    "architectures": ["Glm4vForConditionalGeneration"],
    "image_start_token_id": 151339,
    "image_end_token_id": 151340,
    "video_start_token_id": 151341,
    "video_end_token_id": 151342,
    "image_token_id": 151343,
    "video_token_id": 151344,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "glm4v_text",
        "hidden_size": 4096,
        "intermediate_size": 13696,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "attention_bias": True,
        "hidden_act": "silu",
        "vocab_size": 151552,
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-05,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": [8, 12, 12]},
        "pad_token_id": 151329,
        "eos_token_id": [151329, 151336, 151338, 151348],
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "glm4v_vision",
        "depth": 24,
        "hidden_size": 1536,
        "intermediate_size": 13696,
        "num_heads": 12,
        "hidden_act": "silu",
        "attention_bias": False,
        "image_size": 336,
        "patch_size": 14,
        "in_channels": 3,
        "out_hidden_size": 4096,
        "rms_norm_eps": 1e-05,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}

# --- Phi-4-multimodal (transformers-native form) ---------------------------------------------------------------
# microsoft/Phi-4-multimodal-instruct in transformers' Phi4MultimodalForCausalLM form (the `Phi4MultimodalConfig`
# defaults are that checkpoint's, transformers docs model_doc/phi4_multimodal): Phi-4-mini LM (32 layers, width
# 3072, 24 heads, 8 key/value heads, vocab 200064, tied embeddings), a SigLIP-style tower at 448 px (27 layers)
# and the 24-block conformer audio encoder. The longrope factors are left out (they steer values, not shapes).
# Checked: the vision and audio fields equal transformers 5.24's Phi4MultimodalVisionConfig/AudioConfig defaults
# (documented as microsoft/Phi-4-multimodal-instruct's) and the original checkpoint's audio_processor block
# (attention_dim 1024, 16 heads, linear_units 1536, 24 blocks, conv_channels 1024, input 80, time_reduction 8) as
# copies of its config.json show (e.g. huggingface.co/ysdede/Phi-4-mm-inst-asr-turkish-3, raw config.json at
# af74398). The LM heads are 24 / 8 as in microsoft/Phi-4-mini-instruct's config.json (onnx-community/
# Phi-4-mini-instruct-ONNX-MHA copy), not Phi4MultimodalConfig's default 32; tie_word_embeddings True (Phi-4-mini's)
# is not verified against the multimodal file itself.
_PHI4_MM: Config = {
    "model_type": "phi4_multimodal",
    "architectures": ["Phi4MultimodalForCausalLM"],
    "vocab_size": 200064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "partial_rotary_factor": 0.75,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 199999,
    "eos_token_id": [199999, 200020],
    "pad_token_id": 199999,
    "vision_config": {
        "model_type": "phi4_multimodal_vision",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 448,
        "patch_size": 14,
        "crop_size": 448,
        "feature_layer": -2,
        "image_token_id": 200010,
    },
    "audio_config": {
        "model_type": "phi4_multimodal_audio",
        "hidden_size": 1024,
        "intermediate_size": 1536,
        "num_blocks": 24,
        "num_attention_heads": 16,
        "input_size": 80,
        "nemo_conv_channels": 1024,
        "time_reduction": 8,
        "downsample_rate": 1,
        "audio_token_id": 200011,
        "feature_layer": -2,
    },
}

# --- Remote-code InternVL (InternVLChatModel, family internvl-chat) --------------------------------------------
# OpenGVLab/InternVL2_5-8B, InternVL3-{8B,78B}, InternVL3_5-8B config.json: "vision_config" + "llm_config" as
# InternVL2, 448 px tiles, pixel shuffle 0.5. The V2_5 towers have InternViT-300M/6B's shapes.
# Checked: InternVL3_5-8B's llm_config (Qwen3-8B: 4096/12288/36/32/8, head_dim 128, 40960 positions, vocab 151936,
# theta 1e6) in https://huggingface.co/OpenGVLab/InternVL3_5-8B/blob/refs%2Fpr%2F12/config.json; InternVL3-78B's
# (8192/29568) in huggingface.co/OpenGVLab/InternVL3-78B-Instruct/blob/main/config.json; InternVL3-8B/78B's
# vocab 151674, 32768 positions and dynamic rope factor 2.0 in the MindSpeed-MM files above; InternVL2_5-8B's
# llm_config is internlm/internlm2_5-7b-chat's (InternLM2ForCausalLM, no bias, bos 1 / eos 2) as the head of a
# copy of its config.json shows (huggingface.co/zhouxihong/InternVL2_5-8B-AWQ, config.json at e303f50); its
# widths and vocab 92553 were not in the fetched excerpt (92553 is InternVL2-8B's, OpenGVLab/InternVL2-8B-MPO commit
# 1e37f9f). Sizes match the cards (8.08B, 7.94B, 78.4B, 8.53B) to their rounding.


def _internvl_chat(vision: Config, llm: Config, template: str) -> Config:
    return {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "vision_config": dict(vision),
        "llm_config": llm,
        "downsample_ratio": 0.5,
        "force_image_size": 448,
        "select_layer": -1,
        "ps_version": "v2",
        "template": template,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "max_dynamic_patch": 12,
    }


# internlm/internlm2_5-7b-chat/config.json as InternVL2_5-8B's llm_config holds it (vocab 92553 with InternVL's
# 9 added tokens; remote code InternLM2ForCausalLM).
_INTERNLM2_5_7B: Config = {
    "model_type": "internlm2",
    "architectures": ["InternLM2ForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 92553,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "bias": False,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
# Qwen/Qwen3-8B/config.json as InternVL3_5-8B's llm_config holds it (Qwen3ForCausalLM: head_dim 128, q/k norms).
_QWEN3_8B: Config = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    "llava-onevision-0.5b": (
        "llava-onevision",
        _llava_onevision(_qwen2(896, 4864, 24, 14, 2, 152000, tie=True)),
        ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "lmms-lab/llava-onevision-qwen2-0.5b-ov"),
        "bfloat16",
    ),
    "llava-onevision-7b": (
        "llava-onevision",
        _llava_onevision(_qwen2(3584, 18944, 28, 28, 4, 152128, tie=False)),
        ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "lmms-lab/llava-onevision-qwen2-7b-ov"),
        "bfloat16",
    ),
    "llava-onevision-72b": (
        "llava-onevision",
        _llava_onevision(_qwen2(8192, 29568, 80, 64, 8, 152128, tie=False)),
        ("llava-hf/llava-onevision-qwen2-72b-ov-hf", "lmms-lab/llava-onevision-qwen2-72b-ov"),
        "bfloat16",
    ),
    "smolvlm2-2.2b": ("smolvlm", _SMOLVLM2_2B, ("HuggingFaceTB/SmolVLM2-2.2B-Instruct",), "bfloat16"),
    "idefics3-8b": ("idefics3", _IDEFICS3_8B, ("HuggingFaceM4/Idefics3-8B-Llama3",), "bfloat16"),
    "internvl3-8b-hf": (
        "internvl-hf",
        _internvl_hf(_INTERNVL_VISION_300M, _internvl3_lm(3584, 18944, 28, 28, 4)),
        ("OpenGVLab/InternVL3-8B-hf",),
        "bfloat16",
    ),
    "internvl3-78b-hf": (
        "internvl-hf",
        _internvl_hf(_INTERNVL_VISION_6B, _internvl3_lm(8192, 29568, 80, 64, 8)),
        ("OpenGVLab/InternVL3-78B-hf",),
        "bfloat16",
    ),
    "glm-4.1v-9b": ("glm4v", _GLM41V_9B, ("zai-org/GLM-4.1V-9B-Thinking", "THUDM/GLM-4.1V-9B-Thinking"), "bfloat16"),
    "phi-4-multimodal": ("phi4-multimodal", _PHI4_MM, ("microsoft/Phi-4-multimodal-instruct",), "bfloat16"),
    "internvl2.5-8b": (
        "internvl-chat",
        _internvl_chat(_INTERN_VIT_300M, _INTERNLM2_5_7B, "internvl2_5"),
        ("OpenGVLab/InternVL2_5-8B",),
        "bfloat16",
    ),
    "internvl3-8b": (
        "internvl-chat",
        _internvl_chat(
            _INTERN_VIT_300M,
            _internvl3_lm(3584, 18944, 28, 28, 4),
            "internvl2_5",
        ),
        ("OpenGVLab/InternVL3-8B",),
        "bfloat16",
    ),
    "internvl3-78b": (
        "internvl-chat",
        _internvl_chat(_INTERN_VIT_6B, _internvl3_lm(8192, 29568, 80, 64, 8), "internvl2_5"),
        ("OpenGVLab/InternVL3-78B",),
        "bfloat16",
    ),
    "internvl3.5-8b": (
        "internvl-chat",
        _internvl_chat(_INTERN_VIT_300M, _QWEN3_8B, "internvl2_5"),
        ("OpenGVLab/InternVL3_5-8B",),
        "bfloat16",
    ),
}

# Published parameter counts (the hub pages' "Model size" / the model cards):
PUBLISHED_PARAMS: dict[str, float] = {
    "llava-onevision-0.5b": 0.894e9,  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf: 894M
    "llava-onevision-7b": 8.03e9,  # llava-hf/llava-onevision-qwen2-7b-ov-hf: 8.03B
    "llava-onevision-72b": 73.2e9,  # llava-hf/llava-onevision-qwen2-72b-ov-hf: 73.2B
    "smolvlm2-2.2b": 2.25e9,  # HuggingFaceTB/SmolVLM2-2.2B-Instruct: 2.25B
    "idefics3-8b": 8.46e9,  # HuggingFaceM4/Idefics3-8B-Llama3: 8.46B
    "internvl3-8b-hf": 7.94e9,  # OpenGVLab/InternVL3-8B: 7.94B
    "internvl3-78b-hf": 78.4e9,  # OpenGVLab/InternVL3-78B: 78.4B
    "glm-4.1v-9b": 10.3e9,  # zai-org/GLM-4.1V-9B-Thinking: 10.3B
    "internvl2.5-8b": 8.08e9,  # OpenGVLab/InternVL2_5-8B: 8.08B
    "internvl3-8b": 7.94e9,  # OpenGVLab/InternVL3-8B: 7.94B
    "internvl3-78b": 78.4e9,  # OpenGVLab/InternVL3-78B: 78.4B
    "internvl3.5-8b": 8.53e9,  # OpenGVLab/InternVL3_5-8B: 8.53B
}
