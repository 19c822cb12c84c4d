"""Presets of Gemma 3 (4B/12B/27B), Llama 3.2 Vision (11B/90B) and Llama 4 (Scout, Maverick).

Each config holds the fields of the published config.json that shape the module tree and the parameter sizes,
in the nested form the hub files have (`text_config`, `vision_config`). Sources are named per config; the
published sizes are the model cards' (Llama 4), the Gemma 3 technical report's, or the safetensors total the
hub page states (Llama 3.2 Vision), and the full-width meta twin must match them within 1%.
"""

from __future__ import annotations

from typing import Any

Config = dict[str, Any]

# --- Gemma 3 -------------------------------------------------------------------------------------------------
# google/gemma-3-{4b,12b,27b}-it/config.json (transformers_version 4.50.0.dev0): the same SigLIP tower
# ("siglip_vision_model", 27 layers, width 1152, 896 px, patch 14, no pooling head) and 256 tokens per image in
# all three. Text fields left out of the hub files take Gemma3TextConfig's defaults, written out here (vocab
# 262208, head_dim 256, query_pre_attn_scalar 256, sliding window 1024 with a global layer every 6th, tied head);
# the 4B's file omits its 8 heads / 4 key-value heads (defaults), the 12B's and 27B's give them, and the 27B's
# also head_dim 128 and query_pre_attn_scalar 168 (NVIDIA/TensorRT-LLM's Gemma 3 tests copy the 27B's file).
_SIGLIP_896: Config = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "image_size": 896,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-06,
    "vision_use_head": False,
}


def _gemma3(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, head_dim: int,
            scalar: int) -> Config:  # fmt: skip
    return {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "image_token_index": 262144,
        "mm_tokens_per_image": 256,
        "eos_token_id": [1, 106],
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "query_pre_attn_scalar": scalar,
            "vocab_size": 262208,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
            "sliding_window_pattern": 6,
            "tie_word_embeddings": True,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        "vision_config": dict(_SIGLIP_896),
        "torch_dtype": "bfloat16",
    }


# --- Llama 3.2 Vision ----------------------------------------------------------------------------------------
# meta-llama/Llama-3.2-{11B,90B}-Vision(-Instruct)/config.json (transformers_version 4.45.0.dev0): the same
# tiled ViT in both (32 local + 8 global layers, width 1280, 560 px, patch 14, 4 tiles, 8 aspect ratios, 5
# intermediate layers concatenated: vision_output_dim 7680); a Llama 3.1 text model with a cross-attention layer
# after every 4 self-attention layers (11B: 40 layers, 8 of them cross-attention; 90B: 100, 20 of them).
_MLLAMA_VISION: Config = {
    "model_type": "mllama_vision_model",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "attention_heads": 16,
    "num_hidden_layers": 32,
    "num_global_layers": 8,
    "intermediate_layers_indices": [3, 7, 15, 23, 30],
    "vision_output_dim": 7680,
    "image_size": 560,
    "patch_size": 14,
    "num_channels": 3,
    "max_num_tiles": 4,
    "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
    "hidden_act": "gelu",
    "norm_eps": 1e-05,
}


_LLAMA31_ROPE: Config = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip


def _mllama(hidden: int, intermediate: int, layers: int, heads: int, instruct: bool) -> Config:
    return {
        "model_type": "mllama",
        "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": 128256,
        "text_config": {
            "model_type": "mllama_text_model",
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 8,
            "cross_attention_layers": list(range(3, layers, 5)),
            "vocab_size": 128256,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "rope_scaling": dict(_LLAMA31_ROPE),
            "tie_word_embeddings": False,
            "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009] if instruct else 128001,
            "pad_token_id": 128004,
        },
        "vision_config": dict(_MLLAMA_VISION),
        "torch_dtype": "bfloat16",
    }


# --- Llama 4 -------------------------------------------------------------------------------------------------
# meta-llama/Llama-4-Scout-17B-16E-Instruct/config.json and Llama-4-Maverick-17B-128E-Instruct/config.json
# (transformers_version 4.51.0.dev0); the Maverick fields as NVIDIA/TensorRT-LLM's Llama 4 tests copy them,
# the Scout's as aws-neuron/neuronx-distributed-inference's tests do. Both: 48 layers of width 5120 (40 heads of 128, 8
# key-value heads), experts of width 8192 and dense MLPs of 16384, top-1 routing with a shared expert, a
# 202048-token vocabulary, untied head; the same 34-layer vision encoder (width 1408, 336 px, patch 14, pixel
# shuffle 0.5, projector 4096). Scout: 16 experts in every layer, qk-norm, llama3 rope scaling (factor 16).
# Maverick: 128 experts in every other layer (interleave_moe_layer_step 2), no qk-norm, no rope scaling.
_LLAMA4_VISION: Config = {
    "model_type": "llama4_vision_model",
    "hidden_size": 1408,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_hidden_layers": 34,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "pixel_shuffle_ratio": 0.5,
    "projector_input_dim": 4096,
    "projector_output_dim": 4096,
    "vision_output_dim": 4096,
    "multi_modal_projector_bias": False,
    "projector_dropout": 0.0,
    "hidden_act": "gelu",
    "norm_eps": 1e-05,
    "rope_theta": 10000,
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
}


def _llama4(experts: int, step: int, *, qk_norm: bool, rope_scaling: Config | None, positions: int) -> Config:
    return {
        "model_type": "llama4",
        "architectures": ["Llama4ForConditionalGeneration"],
        "boi_token_index": 200080,
        "eoi_token_index": 200081,
        "image_token_index": 200092,
        "text_config": {
            "model_type": "llama4_text",
            "hidden_size": 5120,
            "intermediate_size": 8192,
            "intermediate_size_mlp": 16384,
            "num_hidden_layers": 48,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "num_local_experts": experts,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": step,
            "use_qk_norm": qk_norm,
            "attention_chunk_size": 8192,
            "attention_bias": False,
            "vocab_size": 202048,
            "hidden_act": "silu",
            "max_position_embeddings": positions,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "rope_scaling": rope_scaling,
            "router_aux_loss_coef": 0.001,
            "tie_word_embeddings": False,
            "bos_token_id": 200000,
            "eos_token_id": [200001, 200007, 200008],
            "pad_token_id": 200018,
        },
        "vision_config": dict(_LLAMA4_VISION),
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


_SCOUT_ROPE: Config = {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip

# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    "gemma-3-4b": (
        "gemma3",
        _gemma3(2560, 10240, 34, 8, 4, 256, 256),
        ("google/gemma-3-4b-it", "google/gemma-3-4b-pt"),
        "bfloat16",
    ),
    "gemma-3-12b": (
        "gemma3",
        _gemma3(3840, 15360, 48, 16, 8, 256, 256),
        ("google/gemma-3-12b-it", "google/gemma-3-12b-pt"),
        "bfloat16",
    ),
    "gemma-3-27b": (
        "gemma3",
        _gemma3(5376, 21504, 62, 32, 16, 128, 168),
        ("google/gemma-3-27b-it", "google/gemma-3-27b-pt"),
        "bfloat16",
    ),
    "llama-3.2-11b-vision": (
        "mllama",
        _mllama(4096, 14336, 40, 32, instruct=True),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", "meta-llama/Llama-3.2-11B-Vision"),
        "bfloat16",
    ),
    "llama-3.2-90b-vision": (
        "mllama",
        _mllama(8192, 28672, 100, 64, instruct=True),
        ("meta-llama/Llama-3.2-90B-Vision-Instruct", "meta-llama/Llama-3.2-90B-Vision"),
        "bfloat16",
    ),
    "llama-4-scout": (
        "llama4",
        _llama4(16, 1, qk_norm=True, rope_scaling=_SCOUT_ROPE, positions=10485760),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "meta-llama/Llama-4-Scout-17B-16E"),
        "bfloat16",
    ),
    "llama-4-maverick": (
        "llama4",
        _llama4(128, 2, qk_norm=False, rope_scaling=None, positions=1048576),
        ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", "meta-llama/Llama-4-Maverick-17B-128E"),
        "bfloat16",
    ),
}

# Published parameter counts:
PUBLISHED_PARAMS: dict[str, float] = {
    # Gemma 3 technical report (arXiv 2503.19786), Table 1: vision encoder 417M + embedding + non-embedding
    "gemma-3-4b": 4.30e9,  # 417M + 675M + 3,209M
    "gemma-3-12b": 12.19e9,  # 417M + 1,012M + 10,759M
    "gemma-3-27b": 27.43e9,  # 417M + 1,416M + 25,600M
    # The hub pages' safetensors totals
    "llama-3.2-11b-vision": 10.7e9,  # meta-llama/Llama-3.2-11B-Vision-Instruct: 10.7B
    "llama-3.2-90b-vision": 88.6e9,  # meta-llama/Llama-3.2-90B-Vision-Instruct: 88.6B
    # The Llama 4 model card: total parameters
    "llama-4-scout": 109e9,  # Llama 4 Scout (17Bx16E): 17B active, 109B total
    "llama-4-maverick": 400e9,  # Llama 4 Maverick (17Bx128E): 17B active, 400B total
}
