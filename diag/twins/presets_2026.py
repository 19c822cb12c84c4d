"""Presets of MiniCPM-V 2.6, DeepSeek-VL2 and Ovis2 (remote code): published configs that diag does not build.

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

# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    "minicpm-v-2.6": ("minicpm-v", _MINICPM_V_2_6, ("openbmb/MiniCPM-V-2_6",), "bfloat16"),
    "deepseek-vl2-tiny": ("deepseek-vl2", _DEEPSEEK_VL2_TINY, ("deepseek-ai/deepseek-vl2-tiny",), "bfloat16"),
    "deepseek-vl2-small": ("deepseek-vl2", _DEEPSEEK_VL2_SMALL, ("deepseek-ai/deepseek-vl2-small",), "bfloat16"),
    "deepseek-vl2": ("deepseek-vl2", _DEEPSEEK_VL2, ("deepseek-ai/deepseek-vl2",), "bfloat16"),
}

# Published sizes (model cards / the DeepSeek-VL2 paper, arXiv 2412.10302: 3B, 16B and 27B total, 1.0B, 2.8B and
# 4.5B activated). No twin is built of these, so no parameter count is compared with them.
PUBLISHED_PARAMS: dict[str, float] = {
    "minicpm-v-2.6": 8e9,  # "a total of 8B parameters" (OpenBMB/MiniCPM-V docs/minicpm_v2dot6.md)
    "deepseek-vl2-tiny": 3e9,
    "deepseek-vl2-small": 16e9,
    "deepseek-vl2": 27e9,
}
