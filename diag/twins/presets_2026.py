"""Presets of MiniCPM-V 2.6/4.0/4.5, DeepSeek-VL2 and Ovis2/2.5 (remote code): published configs diag does not build.

The eval kits run these models with code that is neither transformers' nor diag's (diag/twins/families/
config_only.py): the presets hold the published config.json fields that the checks read without building anything
(the language model's heads and depth for the backend checks, the family for the map checks and the fixes). Their
memory and same-device checks skip with MODEL-003, which says how to have diag run the model's own code.
`PUBLISHED_PARAMS` is the size the model card states (for the record; no twin is built, so no count is compared).
"""

from __future__ import annotations

from typing import Any

Config = dict[str, Any]

# --- MiniCPM-V 2.6 (remote code: openbmb/MiniCPM-V-2_6) -------------------------------------------------------
# "built on SigLip-400M and Qwen2-7B with a total of 8B parameters" (OpenBMB/MiniCPM-V docs/minicpm_v2dot6.md).
# The language model's fields are Qwen/Qwen2-7B-Instruct's config.json (as the qwen2-vl-7b preset holds them); the
# vision tower's are those llama.cpp's examples/llava/minicpmv-convert-image-encoder-to-gguf.py builds for
# MiniCPM-V 2.6 (width 1152, MLP 4304, 16 heads, 27 layers, patch 14, 980 px position grid). The auto_map names the
# classes the checkpoint's own files define (modeling_minicpmv.MiniCPMV, which the eval kits load with
# trust_remote_code=True).
_MINICPM_V_2_6: Config = {
    "architectures": ["MiniCPMV"],
    "model_type": "minicpmv",
    "auto_map": {
        "AutoConfig": "configuration_minicpm.MiniCPMVConfig",
        "AutoModel": "modeling_minicpmv.MiniCPMV",
        "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV",
    },
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "image_size": 980,
        "patch_size": 14,
    },
}

# --- MiniCPM-V 4.0 (remote code: openbmb/MiniCPM-V-4) ----------------------------------------------------------
# "built based on SigLIP2-400M and MiniCPM4-3B with a total of 4.1B parameters" (OpenBMB/MiniCPM-V
# docs/minicpm_v4_en.md). Language-model fields as OpenBMB's transformers port lists them "from config.json"
# (huggingface/transformers@0bee2ff9 tests/models/minicpm_v_4/test_modeling_minicpm_v_4.py: width 2560, MLP 10240,
# 32 heads of 128, 2 KV heads, vocabulary 73448, 32768 positions, rope_theta 10000, untied head). That test shrinks
# the depth, and no source read gives the checkpoint's num_hidden_layers, so the preset leaves it out (no check
# that runs on a config-only preset reads it). The vision tower is SigLIP2-400M, whose fields are MiniCPM-V 4.5's
# (below; the port's test lists the same width, MLP and heads).
# The SigLIP2-400M tower of MiniCPM-V 4.0 and 4.5 (4.5's config.json; the 4.0 card names the same tower).
_MINICPM_V_4_SIGLIP: Config = {
    "model_type": "siglip",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "image_size": 980,
    "patch_size": 14,
}
_MINICPM_V_4: Config = {
    "architectures": ["MiniCPMV"],
    "model_type": "minicpmv",
    "auto_map": dict(_MINICPM_V_2_6["auto_map"]),
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "vocab_size": 73448,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "query_num": 64,
    "image_size": 448,
    "patch_size": 14,
    "torch_dtype": "bfloat16",
    "vision_config": dict(_MINICPM_V_4_SIGLIP),
}

# --- MiniCPM-V 4.5 (remote code: openbmb/MiniCPM-V-4_5) --------------------------------------------------------
# "built on Qwen3-8B and SigLIP2-400M with a total of 8B parameters" (model card; OpenBMB/MiniCPM-V
# docs/minicpm_v4dot5_en.md). Fields from a copy of the checkpoint's config.json (_name_or_path
# openbmb/MiniCPM-V-4_5, transformers 4.51.0) in PcOffeeP/FineTune_MLLM Model/MiniCPM-VL-4.5/config.json.
_MINICPM_V_4_5: Config = {
    "architectures": ["MiniCPMV"],
    "model_type": "minicpmv",
    "version": 4.5,
    "auto_map": dict(_MINICPM_V_2_6["auto_map"]),
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151748,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "query_num": 64,
    "image_size": 448,
    "patch_size": 14,
    "torch_dtype": "bfloat16",
    "vision_config": dict(_MINICPM_V_4_SIGLIP),
}

# --- DeepSeek-VL2 (the deepseek_vl2 package: deepseek-ai/deepseek-vl2, -small, -tiny) --------------------------
# config.json: model_type "deepseek_vl_v2" with no auto_map; "language_config" a DeepseekV2Config (MoE, the first
# layer dense), "vision_config" SigLIP-SO400M at 384 px (timm `siglip_so400m_patch14_384`, 27 layers, width 1152),
# "projector_config" an MLP into the LM width. Values as transcribed from the three published config.json files in
# public code: deepseek-vl2 as a checkpoint copy (earl-juanico/rca DeepSeek-VL2/deepseek_vl2/config.json), the
# language_config of all three in an inference engine's tests (alibaba rtp-llm, "official sparse configs").
# deepseek-vl2's config.json leaves out the depth and heads: the package's DeepseekV2Config defaults apply (30
# layers, 32 heads, 32 KV heads; deepseek-ai/DeepSeek-VL2 deepseek_vl2/models/configuration_deepseek.py), written
# out here so that the backend checks can read them.
_SIGLIP_SO400M_384: Config = {
    "model_type": "vision",
    "model_name": "siglip_so400m_patch14_384",
    "layers": 27,
    "width": 1152,
    "patch_size": 14,
    "mlp_ratio": 3.7362,
}


def _deepseek_vl2(language: Config) -> Config:
    return {
        "model_type": "deepseek_vl_v2",
        "language_config": {
            "model_type": "deepseek_v2",
            "architectures": ["DeepseekV2ForCausalLM"],
            "vocab_size": 129280,
            "max_position_embeddings": 4096,
            "first_k_dense_replace": 1,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "n_group": 1,
            "topk_group": 1,
            "q_lora_rank": None,
            "bos_token_id": 0,
            "eos_token_id": 1,
            **language,
        },
        "vision_config": dict(_SIGLIP_SO400M_384),
        "projector_config": {"model_type": "mlp_projector", "n_embed": language["hidden_size"]},
        "tile_tag": "2D",
        "global_view_pos": "head",
        "torch_dtype": "bfloat16",
    }


_DEEPSEEK_VL2_TINY = _deepseek_vl2({
    "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896, "num_hidden_layers": 12,
    "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64, "topk_method": "greedy",
    "use_mla": False, "kv_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0,
})  # fmt: skip
_DEEPSEEK_VL2_SMALL = _deepseek_vl2({
    "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64, "topk_method": "greedy",
})  # fmt: skip
_DEEPSEEK_VL2 = _deepseek_vl2({
    "hidden_size": 2560, "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 32, "num_key_value_heads": 32, "n_routed_experts": 72, "topk_method": "noaux_tc",
    "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.0,
})  # fmt: skip

# --- Ovis2 (remote code: AIDC-AI/Ovis2-8B, -34B) ----------------------------------------------------------------
# config.json: architectures ["Ovis"], model_type "ovis", the language model in llm_config (a Qwen2Config), the
# visual tokenizer in visual_tokenizer_config (model_type "aimv2_visual_tokenizer", hidden_stride 2) around an AIMv2
# backbone_config. Ovis2-8B is aimv2-huge-patch14-448 + Qwen2.5-7B-Instruct, Ovis2-34B aimv2-1B-patch14-448 +
# Qwen2.5-32B-Instruct (the Ovis2 model cards' model zoo table). Ovis2-34B's fields are its config.json as copied in
# earl-juanico/rca Ovis2-34B/Ovis2-34B/config.json (whose auto_map names a locally renamed CustomOvis class; the
# published Ovis2 configs name modeling_ovis.Ovis, as a copy of Ovis2-1B's in ThomasTheMaker/Ovis2-1B-RKLLM-1.2.0
# shows). Ovis2-8B's: Qwen2.5-7B-Instruct's config.json and aimv2-huge-patch14-448's (1536 wide, 12 heads, MLP 4096,
# 24 blocks), both as copied in earl-juanico/rca SAIL-VL-1d6-8B/SAIL-VL-1d6-8B/config.json (llm_config and the
# "ovis-4B-aimv2-ViT-huge-patch14-448" vision_config). transformers' convert_ovis2_weights_to_hf.py reads the same
# llm_config / visual_tokenizer_config.backbone_config fields into its native Ovis2Config.
_OVIS2_AUTO_MAP = {"AutoConfig": "configuration_ovis.OvisConfig", "AutoModelForCausalLM": "modeling_ovis.Ovis"}


def _qwen2(width: int, mlp: int, layers: int, heads: int, kv: int, name: str) -> Config:
    return {
        "_name_or_path": name, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": width,
        "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }  # fmt: skip


def _aimv2(width: int, mlp: int, heads: int, name: str) -> Config:
    return {
        "_name_or_path": name, "architectures": ["AIMv2Model"], "model_type": "aimv2", "hidden_size": width,
        "intermediate_size": mlp, "num_attention_heads": heads, "num_hidden_layers": 24, "image_size": 448,
        "patch_size": 14, "num_channels": 3, "rms_norm_eps": 1e-05, "qkv_bias": False, "use_bias": False,
    }  # fmt: skip


def _ovis2(llm: Config, backbone: Config, visual_vocab: int | None) -> Config:
    tokenizer: Config = {"model_type": "aimv2_visual_tokenizer", "hidden_stride": 2, "tokenize_function": "softmax",
                         "backbone_config": backbone}  # fmt: skip
    if visual_vocab is not None:
        tokenizer["vocab_size"] = visual_vocab
    return {
        "architectures": ["Ovis"], "model_type": "ovis", "auto_map": dict(_OVIS2_AUTO_MAP),
        "conversation_formatter_class": "QwenConversationFormatter", "hidden_size": llm["hidden_size"],
        "multimodal_max_length": 32768, "llm_config": llm, "visual_tokenizer_config": tokenizer,
        "torch_dtype": "bfloat16",
    }  # fmt: skip


# Ovis2-34B's visual vocabulary (65536) is in its config.json; Ovis2-8B's is not in the sources read, so it is left out.
_OVIS2_8B = _ovis2(_qwen2(3584, 18944, 28, 28, 4, "Qwen/Qwen2.5-7B-Instruct"),
                   _aimv2(1536, 4096, 12, "apple/aimv2-huge-patch14-448"), None)  # fmt: skip
_OVIS2_34B = _ovis2(_qwen2(5120, 27648, 64, 40, 8, "Qwen/Qwen2.5-32B-Instruct"),
                    _aimv2(2048, 5632, 16, "apple/aimv2-1B-patch14-448"), 65536)  # fmt: skip

# --- Ovis2.5 (remote code: AIDC-AI/Ovis2.5-2B, -9B) ---------------------------------------------------------------
# config.json: model_type "ovis2_5", class modeling_ovis2_5.Ovis2_5 (vLLM registers the architecture "Ovis2_5"),
# llm_config a Qwen3 (2B: Qwen3-1.7B-sized, tied head; 9B: Qwen3-8B-sized), vit_config a SigLIP2 NaViT, and
# visual_vocab_size 65536. Every field as transformers' own converter checks the two released layouts
# (huggingface/transformers@c4170226 src/transformers/models/ovis2_5/convert_ovis2_5_weights_to_hf.py:
# CHECKPOINT_SPECS, EXPECTED_TEXT_LAYOUT, EXPECTED_VISION_LAYOUT; no installed transformers here has ovis2_5). The
# config class's entry of auto_map is not in the sources read, so only the model class is written.
_OVIS2_5_VIT: Config = {
    "model_type": "siglip2_navit", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_channels": 3, "num_patches": -1, "image_size": 512, "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06, "hidden_stride": 2, "window_size": 112,
    "fullatt_block_indexes": None, "temporal_patch_size": 1, "preserve_original_pe": True, "use_rope": True,
}  # fmt: skip


def _ovis2_5(width: int, layers: int, heads: int, kv: int, mlp: int, tied: bool) -> Config:
    llm: Config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": width, "intermediate_size": mlp,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000, "rms_norm_eps": 1e-06,
        "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": tied, "bos_token_id": 151643,
        "eos_token_id": 151645,
    }  # fmt: skip
    return {
        "architectures": ["Ovis2_5"], "model_type": "ovis2_5", "auto_map": {"AutoModelForCausalLM":
        "modeling_ovis2_5.Ovis2_5"}, "visual_vocab_size": 65536, "llm_config": llm, "vit_config": dict(_OVIS2_5_VIT),
        "torch_dtype": "bfloat16",
    }  # fmt: skip


_OVIS2_5_2B = _ovis2_5(2048, 28, 16, 8, 6144, tied=True)
_OVIS2_5_9B = _ovis2_5(4096, 36, 32, 8, 12288, tied=False)

# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    "minicpm-v-2.6": ("minicpm-v", _MINICPM_V_2_6, ("openbmb/MiniCPM-V-2_6",), "bfloat16"),
    "minicpm-v-4": ("minicpm-v", _MINICPM_V_4, ("openbmb/MiniCPM-V-4",), "bfloat16"),
    "minicpm-v-4.5": ("minicpm-v", _MINICPM_V_4_5, ("openbmb/MiniCPM-V-4_5",), "bfloat16"),
    "deepseek-vl2-tiny": ("deepseek-vl2", _DEEPSEEK_VL2_TINY, ("deepseek-ai/deepseek-vl2-tiny",), "bfloat16"),
    "deepseek-vl2-small": ("deepseek-vl2", _DEEPSEEK_VL2_SMALL, ("deepseek-ai/deepseek-vl2-small",), "bfloat16"),
    "deepseek-vl2": ("deepseek-vl2", _DEEPSEEK_VL2, ("deepseek-ai/deepseek-vl2",), "bfloat16"),
    "ovis2-8b": ("ovis", _OVIS2_8B, ("AIDC-AI/Ovis2-8B",), "bfloat16"),
    "ovis2-34b": ("ovis", _OVIS2_34B, ("AIDC-AI/Ovis2-34B",), "bfloat16"),
    "ovis2.5-2b": ("ovis", _OVIS2_5_2B, ("AIDC-AI/Ovis2.5-2B",), "bfloat16"),
    "ovis2.5-9b": ("ovis", _OVIS2_5_9B, ("AIDC-AI/Ovis2.5-9B",), "bfloat16"),
}

# Published sizes (model cards / the DeepSeek-VL2 paper, arXiv 2412.10302: 3B, 16B and 27B total, 1.0B, 2.8B and
# 4.5B activated). No twin is built of these, so no parameter count is compared with them.
PUBLISHED_PARAMS: dict[str, float] = {
    "minicpm-v-2.6": 8e9,  # "a total of 8B parameters" (OpenBMB/MiniCPM-V docs/minicpm_v2dot6.md)
    "minicpm-v-4": 4.1e9,  # "a total of 4.1B parameters" (OpenBMB/MiniCPM-V docs/minicpm_v4_en.md)
    "minicpm-v-4.5": 8e9,  # "a total of 8B parameters" (OpenBMB/MiniCPM-V docs/minicpm_v4dot5_en.md)
    "deepseek-vl2-tiny": 3e9,
    "deepseek-vl2-small": 16e9,
    "deepseek-vl2": 27e9,
    # Ovis: the size in the checkpoint's name (the Ovis2 / Ovis2.5 model cards state no other total).
    "ovis2-8b": 8e9,
    "ovis2-34b": 34e9,
    "ovis2.5-2b": 2e9,
    "ovis2.5-9b": 9e9,
}
