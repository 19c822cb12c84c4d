"""The presets: each model's config.json as data, with the hub ids it stands for and its published size.

Nothing here is downloaded. Each config holds the fields of the published config.json that shape the module
tree and the parameter sizes (read with the search tool from the hub pages and the upstream sources named in
the comments); fields that only steer tokenisation or training are left out.
`PUBLISHED_PARAMS` is the size each model card states, which the full-width meta twin must match within 1%.
"""

from __future__ import annotations

from typing import Any

from diag.twins.presets_shared import INTERN_VIT_6B as _INTERN_VIT_6B
from diag.twins.presets_shared import INTERN_VIT_300M as _INTERN_VIT_300M
from diag.twins.presets_shared import lm_shape

Config = dict[str, Any]

# CLIP ViT-L/14 at 336 px, the vision tower of LLaVA-1.5 and LLaVA-NeXT (llava-hf/*/config.json "vision_config").
_CLIP_L_336: Config = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000,
}

# LLaVA-NeXT "anyres" grid (llava-hf/llava-v1.6-*-hf/config.json "image_grid_pinpoints").
_ANYRES_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _vicuna(hidden: int, intermediate: int, layers: int, heads: int) -> Config:
    # lmsys/vicuna-*-v1.5 as llava-hf stores it: Llama, vocab 32064 (32000 + <image> + <pad> + padding to 64).
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "vocab_size": 32064,
        "tie_word_embeddings": False,
    }


def _llava(text: Config, image_token_index: int) -> Config:
    return {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": text,
        "vision_config": dict(_CLIP_L_336),
        "image_token_index": image_token_index,
        "image_seq_length": 576,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def _llava_next(text: Config, image_token_index: int) -> Config:
    return {
        **_llava(text, image_token_index),
        "model_type": "llava_next",
        "architectures": ["LlavaNextForConditionalGeneration"],
        "image_grid_pinpoints": _ANYRES_336,
        "use_image_newline_parameter": True,
    }


def _qwen2_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, *, tie: bool
) -> Config:
    # Qwen/Qwen2-VL-*-Instruct/config.json: flat text fields, the ViT (depth 32, embed_dim 1280, 16 heads,
    # mlp_ratio 4, patch 14, merge 2) in "vision_config" whose hidden_size is the merger's output width.
    return {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        **lm_shape(hidden, intermediate, layers, heads, kv_heads, vocab),
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": tie,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": layers,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": 32,
            "embed_dim": 1280,
            "num_heads": 16,
            "mlp_ratio": 4,
            "hidden_size": hidden,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "quick_gelu",
        },
    }


# InternVL2 adds 9 tokens to the LM's vocabulary (<img>, </img>, <IMG_CONTEXT>, <quad>, </quad>, <ref>, </ref>,
# <box>, </box>): InternLM2 92544 -> 92553, Llama-3 128256 -> 128265, Qwen2 151646 -> 151655.


def _internlm2(hidden: int, intermediate: int, layers: int, heads: int, theta: float) -> Config:
    # internlm/internlm2_5-7b-chat and internlm/internlm2-chat-20b config.json (remote code InternLM2ForCausalLM).
    return {
        "model_type": "internlm2",
        "architectures": ["InternLM2ForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "vocab_size": 92553,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": theta,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


def _llama(
    hidden: int, intermediate: int, layers: int, heads: int, vocab: int, theta: float, eos: int, bos: int
) -> Config:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "vocab_size": vocab,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05,
        "rope_theta": theta,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }


def _internvl(vision: Config, llm: Config, template: str) -> Config:
    # OpenGVLab/InternVL2-*/config.json: 448 px tiles, pixel shuffle 0.5 -> 256 tokens per tile.
    return {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "vision_config": vision,
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


_INTERNVL2_8B = _internvl(
    _INTERN_VIT_300M, _internlm2(4096, 14336, 32, 32, 1000000.0), "internlm2-chat"
)  # InternViT-300M + internlm2_5-7b-chat
_INTERNVL2_26B = _internvl(
    _INTERN_VIT_6B, _internlm2(6144, 16384, 48, 48, 1000000.0), "internlm2-chat"
)  # InternViT-6B-448px-V1-5 + internlm2-chat-20b
_INTERNVL2_40B = _internvl(
    _INTERN_VIT_6B, _llama(7168, 20480, 60, 56, 64000, 5000000.0, eos=7, bos=1), "Hermes-2"
)  # InternViT-6B-448px-V1-5 + NousResearch/Nous-Hermes-2-Yi-34B (LlamaForCausalLM, vocab 64000)
_INTERNVL2_76B = _internvl(
    _INTERN_VIT_6B, _llama(8192, 28672, 80, 64, 128265, 500000.0, eos=128003, bos=128000), "internvl2_5"
)  # InternViT-6B-448px-V1-5 + NousResearch/Hermes-2-Theta-Llama-3-70B
_INTERNVL2_1B = _internvl(
    _INTERN_VIT_300M,
    {
        # Qwen/Qwen2-0.5B-Instruct as InternVL2-1B's llm_config holds it (untied head: 938M in total).
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151655,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "Hermes-2",
)

# THUDM/cogvlm-chat-hf/config.json (chat v1.1): Vicuna-7B with a visual expert in every layer, and EVA2-CLIP-E
# (63 blocks, width 1792) at 490 px (cogvlm-grounding-base-hf/config.json has the same "vision_config").
_COGVLM_17B: Config = {
    "architectures": ["CogVLMForCausalLM"],
    "model_type": "cogvlm",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "vocab_size": 32000,
    "template_version": "chat",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "vision_config": {
        "hidden_size": 1792,
        "intermediate_size": 15360,
        "num_heads": 16,
        "num_hidden_layers": 63,
        "image_size": 490,
        "patch_size": 14,
        "in_channels": 3,
        "num_positions": 1226,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-06,
        "dropout_prob": 0.0,
    },
}

# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    "llava-1.5-7b": (
        "llava",
        _llava(_vicuna(4096, 11008, 32, 32), 32000),
        ("llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b"),
        "float16",
    ),
    "llava-1.5-13b": (
        "llava",
        _llava(_vicuna(5120, 13824, 40, 40), 32000),
        ("llava-hf/llava-1.5-13b-hf", "liuhaotian/llava-v1.5-13b"),
        "float16",
    ),
    "llava-v1.6-34b": (
        "llava-next",
        # llava-hf/llava-v1.6-34b-hf/config.json: Nous-Hermes-2-Yi-34B, vocab 64064, <image> = 64000.
        _llava_next(
            {
                **_llama(7168, 20480, 60, 56, 64064, 5000000.0, eos=7, bos=1),
                "max_position_embeddings": 4096,
                "pad_token_id": 0,
            },
            64000,
        ),
        ("llava-hf/llava-v1.6-34b-hf", "liuhaotian/llava-v1.6-34b", "lmms-lab/llava-v1.6-34b"),
        "bfloat16",
    ),
    "llava-next-72b": (
        "llava-next",
        # lmms-lab/llava-next-72b: Qwen2-72B-Instruct (80 layers, 8192, 29568, vocab 152064) with CLIP-L/336
        # anyres; llava-hf/llava-next-72b-hf puts <image> at 151646.
        _llava_next(
            {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "hidden_size": 8192,
                "intermediate_size": 29568,
                "num_hidden_layers": 80,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
                "vocab_size": 152064,
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0,
                "tie_word_embeddings": False,
                "use_sliding_window": False,
                "bos_token_id": 151643,
                "eos_token_id": 151645,
            },
            151646,
        ),
        ("lmms-lab/llava-next-72b", "llava-hf/llava-next-72b-hf"),
        "bfloat16",
    ),
    "qwen2-vl-2b": (
        "qwen2-vl",
        _qwen2_vl(1536, 8960, 28, 12, 2, 151936, tie=True),
        ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-2B"),
        "bfloat16",
    ),
    "qwen2-vl-7b": (
        "qwen2-vl",
        _qwen2_vl(3584, 18944, 28, 28, 4, 152064, tie=False),
        ("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-7B"),
        "bfloat16",
    ),
    "qwen2-vl-72b": (
        "qwen2-vl",
        _qwen2_vl(8192, 29568, 80, 64, 8, 152064, tie=False),
        ("Qwen/Qwen2-VL-72B-Instruct", "Qwen/Qwen2-VL-72B"),
        "bfloat16",
    ),
    "internvl2-1b": ("internvl-chat", _INTERNVL2_1B, ("OpenGVLab/InternVL2-1B",), "bfloat16"),
    "internvl2-8b": ("internvl-chat", _INTERNVL2_8B, ("OpenGVLab/InternVL2-8B",), "bfloat16"),
    "internvl2-26b": ("internvl-chat", _INTERNVL2_26B, ("OpenGVLab/InternVL2-26B",), "bfloat16"),
    "internvl2-40b": ("internvl-chat", _INTERNVL2_40B, ("OpenGVLab/InternVL2-40B",), "bfloat16"),
    "internvl2-76b": ("internvl-chat", _INTERNVL2_76B, ("OpenGVLab/InternVL2-Llama3-76B",), "bfloat16"),
    "cogvlm-17b": ("cogvlm", _COGVLM_17B, ("THUDM/cogvlm-chat-hf", "zai-org/cogvlm-chat-hf"), "bfloat16"),
}

# Published parameter counts (model cards / the sum of the published parts):
PUBLISHED_PARAMS: dict[str, float] = {
    "llava-1.5-7b": 7.06e9,  # llava-hf/llava-1.5-7b-hf: 7.06B
    "llava-1.5-13b": 13.4e9,  # llava-hf/llava-1.5-13b-hf: 13.4B
    "llava-v1.6-34b": 34.8e9,  # llava-hf/llava-v1.6-34b-hf: 34.8B
    "llava-next-72b": 73.1e9,  # Qwen2-72B-Instruct 72.7B + CLIP-L/336 0.30B + projector 0.08B
    "qwen2-vl-2b": 2.21e9,  # Qwen/Qwen2-VL-2B-Instruct: 2.21B
    "qwen2-vl-7b": 8.29e9,  # Qwen/Qwen2-VL-7B-Instruct: 8.29B
    "qwen2-vl-72b": 73.4e9,  # Qwen/Qwen2-VL-72B-Instruct: 73.4B
    "internvl2-1b": 0.938e9,  # OpenGVLab/InternVL2-1B: 938M
    "internvl2-8b": 8.08e9,  # OpenGVLab/InternVL2-8B: 8.08B (card table: 8.1B)
    "internvl2-26b": 25.5e9,  # OpenGVLab/InternVL2-26B: 25.5B (same parts as InternVL-Chat-V1-5, 25.5B)
    "internvl2-40b": 40.1e9,  # OpenGVLab/InternVL2-40B: 40.1B
    "internvl2-76b": 76.3e9,  # OpenGVLab/InternVL2-Llama3-76B: 76.3B
    "cogvlm-17b": 17.6e9,  # CogVLM-17B: "10 billion vision parameters and 7 billion language parameters"
}


# The presets of the 2025-26 families live beside this module, one module per group, each with its own
# PRESET_TABLE and PUBLISHED_PARAMS in the form above; they are merged here.
_GROUPS: tuple[str, ...] = ("presets_qwen", "presets_gemma_llama", "presets_more", "presets_2026")


def _merge_groups() -> None:
    import importlib

    for group in _GROUPS:
        module = importlib.import_module(f"diag.twins.{group}")
        for name in module.PRESET_TABLE:
            if name in PRESET_TABLE:
                raise ValueError(f"preset {name!r} defined twice (diag.twins.{group})")
        PRESET_TABLE.update(module.PRESET_TABLE)
        PUBLISHED_PARAMS.update(module.PUBLISHED_PARAMS)


_merge_groups()
