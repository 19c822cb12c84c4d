"""Presets of Qwen2.5-VL and Qwen3-VL (dense and MoE): the published config.json fields that shape the tree.

Qwen2.5-VL configs are published flat (text fields at the top, as Qwen2-VL's; Qwen/Qwen2.5-VL-*-Instruct/
config.json), with a window-attention ViT (depth 32, width 1280, 16 heads, SwiGLU MLP, full attention in blocks
7/15/23/31, window 112 px). Qwen3-VL configs nest the Qwen3 language model in `text_config` (explicit head_dim 128,
q/k norms, interleaved M-RoPE sections [24, 20, 20]) and the ViT (patch 16, learned position grid of 48x48,
DeepStack taps) in `vision_config` (Qwen/Qwen3-VL-*/config.json; transformers' configuration_qwen3_vl.py and
configuration_qwen3_vl_moe.py for the field names). `PUBLISHED_PARAMS` is each model card's size.
"""

from __future__ import annotations

from typing import Any

from diag.twins.presets_shared import lm_shape

Config = dict[str, Any]

_QWEN_IDS = {
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}


def _qwen2_5_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, *, tie: bool,
    vision_mlp: int, window_layers: int,
) -> Config:  # fmt: skip
    return {
        "model_type": "qwen2_5_vl",
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        **lm_shape(hidden, intermediate, layers, heads, kv_heads, vocab),
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "max_window_layers": window_layers,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": tie,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        **_QWEN_IDS,
        "vision_config": {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": vision_mlp,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
    }


# The two Qwen3-VL ViTs: 2B/4B (depth 24, width 1024, taps 5/11/17) and 8B and up (depth 27, width 1152, 8/16/24).
_VIT_SMALL = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "deepstack_visual_indexes": [5, 11, 17]}
_VIT_LARGE = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "deepstack_visual_indexes": [8, 16, 24]}


def _qwen3_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, *, tie: bool, vit: Config,
    moe: Config | None = None,
) -> Config:  # fmt: skip
    text: Config = {
        "model_type": "qwen3_vl_moe_text" if moe else "qwen3_vl_text",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 128,
        "hidden_act": "silu",
        "attention_bias": False,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        "vocab_size": 151936,
        "tie_word_embeddings": tie,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        **(moe or {}),
    }
    return {
        "model_type": "qwen3_vl_moe" if moe else "qwen3_vl",
        "architectures": ["Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"],
        "text_config": text,
        "vision_config": {
            "model_type": "qwen3_vl_moe" if moe else "qwen3_vl",
            **vit,
            "hidden_act": "gelu_pytorch_tanh",
            "num_heads": 16,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "out_hidden_size": hidden,
        },
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": tie,
    }


def _moe(experts: int, per_token: int, expert_mlp: int) -> Config:
    # Qwen/Qwen3-VL-30B-A3B-*/config.json and -235B-A22B-*: every layer sparse, no dense-MLP layers.
    return {"num_experts": experts, "num_experts_per_tok": per_token, "moe_intermediate_size": expert_mlp,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}  # fmt: skip


def _ids(*names: str) -> tuple[str, ...]:
    return tuple(f"Qwen/{name}" for name in names)


# name -> (family, config, hub ids, torch_dtype)
PRESET_TABLE: dict[str, tuple[str, Config, tuple[str, ...], str]] = {
    # Checked: text fields (2048/11008/36/16/2, vocab 151936 tied, max_window_layers 70, 128000 positions) in copies
    # of https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/raw/main/config.json ("_name_or_path" of
    # huggingface.co/zyoNoob/Qwen2.5-VL-3B-Instruct-AWQ and dahwinsingularity/vllm2, config.json); vision 3420 not seen
    # in a fetched 3B file (the hub file omits it; 3420 is Qwen2_5_VLVisionConfig's default), size matches 3.75B.
    "qwen2.5-vl-3b": (
        "qwen2.5-vl",
        _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, tie=True, vision_mlp=3420, window_layers=70),
        _ids("Qwen2.5-VL-3B-Instruct"),
        "bfloat16",
    ),
    # Checked against https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blame/main/config.json (commit a22b9b2):
    # 3584/18944/28/28/4, vocab 152064, untied, 128000 positions; ViT depth 32, 1280, MLP 3420, 16 heads, window 112.
    "qwen2.5-vl-7b": (
        "qwen2.5-vl",
        _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, tie=False, vision_mlp=3420, window_layers=28),
        _ids("Qwen2.5-VL-7B-Instruct"),
        "bfloat16",
    ),
    # Checked: 5120/27648/64/40/8, vocab 152064; ViT width 1280, MLP 3456, out 5120 as a public repository quotes
    # https://huggingface.co/Qwen/Qwen2.5-VL-32B-Instruct/raw/main/config.json (not fetched here); max_window_layers
    # (no effect on shapes) not verified. Size matches 33.5B.
    "qwen2.5-vl-32b": (
        "qwen2.5-vl",
        _qwen2_5_vl(5120, 27648, 64, 40, 8, 152064, tie=False, vision_mlp=3456, window_layers=64),
        _ids("Qwen2.5-VL-32B-Instruct"),
        "bfloat16",
    ),
    # Checked: https://huggingface.co/Qwen/Qwen2.5-VL-72B-Instruct-AWQ/blob/666b8f5f61eebf73e8deff3e33a0f8934038d69f/
    # config.json (Qwen's own AWQ of this model, vision tower left unquantized): ViT MLP 3456, out 8192, 80/64/8.
    # Its LM intermediate_size 29696 is padded for AWQ tensor parallelism (Qwen2-VL-72B's GPTQ repos pad the same
    # way); the bf16 checkpoint's 29568 (Qwen2.5-72B's) is what gives the card's 73.4B (29696 would give 73.66B).
    "qwen2.5-vl-72b": (
        "qwen2.5-vl",
        _qwen2_5_vl(8192, 29568, 80, 64, 8, 152064, tie=False, vision_mlp=3456, window_layers=80),
        _ids("Qwen2.5-VL-72B-Instruct"),
        "bfloat16",
    ),
    # Qwen3-VL-2B and -4B checked against verbatim copies of their config.json in public repositories (transformers
    # 4.57.0.dev0 files: 2B text 2048/6144/28/16/8, 4B text 2560/9728/36/32/8, both head_dim 128, tied, 262144
    # positions, theta 5e6, mrope [24, 20, 20] interleaved; ViT 24/1024/4096/16 heads, deepstack [5, 11, 17], out =
    # text width). Qwen3-VL-8B (Qwen3-8B's LM, the 27-block ViT) not checked against a fetched file. Sizes match the
    # cards (2.13B, 4.44B, 8.77B) to their rounding.
    "qwen3-vl-2b": (
        "qwen3-vl",
        _qwen3_vl(2048, 6144, 28, 16, 8, tie=True, vit=_VIT_SMALL),
        _ids("Qwen3-VL-2B-Instruct", "Qwen3-VL-2B-Thinking"),
        "bfloat16",
    ),
    "qwen3-vl-4b": (
        "qwen3-vl",
        _qwen3_vl(2560, 9728, 36, 32, 8, tie=True, vit=_VIT_SMALL),
        _ids("Qwen3-VL-4B-Instruct", "Qwen3-VL-4B-Thinking"),
        "bfloat16",
    ),
    "qwen3-vl-8b": (
        "qwen3-vl",
        _qwen3_vl(4096, 12288, 36, 32, 8, tie=False, vit=_VIT_LARGE),
        _ids("Qwen3-VL-8B-Instruct", "Qwen3-VL-8B-Thinking"),
        "bfloat16",
    ),
    # Checked against the Qwen/Qwen3-VL-32B-Instruct config.json a public repository ships verbatim ("SHIPPED_CONFIG"
    # of a MiniMax H3 test): 5120/25600/64 layers/64 heads/8 kv, head_dim 128, 262144 positions, theta 5e6;
    # ViT 27/1152/4304/16, out 5120, deepstack [8, 16, 24], 2304 positions.
    "qwen3-vl-32b": (
        "qwen3-vl",
        _qwen3_vl(5120, 25600, 64, 64, 8, tie=False, vit=_VIT_LARGE),
        _ids("Qwen3-VL-32B-Instruct", "Qwen3-VL-32B-Thinking"),
        "bfloat16",
    ),
    # 30B-A3B's LM equals Qwen3-30B-A3B's as public copies of that config.json show (48 layers, 2048, 32 heads / 4
    # kv, 128 experts, top-8, expert MLP 768, norm_topk_prob); the Qwen3-VL MoE files themselves and 235B-A22B's
    # expert MLP 1536 were not checked against a fetched file. The totals match the cards (31.1B, 236B).
    "qwen3-vl-30b-a3b": (
        "qwen3-vl-moe",
        _qwen3_vl(2048, 6144, 48, 32, 4, tie=False, vit=_VIT_LARGE, moe=_moe(128, 8, 768)),
        _ids("Qwen3-VL-30B-A3B-Instruct", "Qwen3-VL-30B-A3B-Thinking"),
        "bfloat16",
    ),
    "qwen3-vl-235b-a22b": (
        "qwen3-vl-moe",
        _qwen3_vl(4096, 12288, 94, 64, 4, tie=False, vit=_VIT_LARGE, moe=_moe(128, 8, 1536)),
        _ids("Qwen3-VL-235B-A22B-Instruct", "Qwen3-VL-235B-A22B-Thinking"),
        "bfloat16",
    ),
}

# Published parameter counts (the Hugging Face model cards' safetensors sizes):
PUBLISHED_PARAMS: dict[str, float] = {
    "qwen2.5-vl-3b": 3.75e9,  # Qwen/Qwen2.5-VL-3B-Instruct: 3.75B
    "qwen2.5-vl-7b": 8.29e9,  # Qwen/Qwen2.5-VL-7B-Instruct: 8.29B
    "qwen2.5-vl-32b": 33.5e9,  # Qwen/Qwen2.5-VL-32B-Instruct: 33.5B
    "qwen2.5-vl-72b": 73.4e9,  # Qwen/Qwen2.5-VL-72B-Instruct: 73.4B
    "qwen3-vl-2b": 2.13e9,  # Qwen/Qwen3-VL-2B-Instruct: 2.13B
    "qwen3-vl-4b": 4.44e9,  # Qwen/Qwen3-VL-4B-Instruct: 4.44B
    "qwen3-vl-8b": 8.77e9,  # Qwen/Qwen3-VL-8B-Instruct: 8.77B
    "qwen3-vl-32b": 33.4e9,  # Qwen/Qwen3-VL-32B-Instruct: 33.4B
    "qwen3-vl-30b-a3b": 31.1e9,  # Qwen/Qwen3-VL-30B-A3B-Instruct: 31.1B
    "qwen3-vl-235b-a22b": 236e9,  # Qwen/Qwen3-VL-235B-A22B-Instruct: 236B
}
