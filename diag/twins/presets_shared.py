"""What several preset groups share: the InternViT towers of InternVL-Chat, as the published config.json files
hold them, and the shape fields of a language model's config."""

from __future__ import annotations

from typing import Any

# OpenGVLab/InternViT-300M-448px/config.json (the vision part of InternVL2-1B/2B/4B/8B).
INTERN_VIT_300M: dict[str, Any] = {
    "model_type": "intern_vit_6b",
    "architectures": ["InternVisionModel"],
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 448,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-06,
    "qk_normalization": False,
    "qkv_bias": True,
    "initializer_factor": 1.0,
    "use_flash_attn": False,
}

# OpenGVLab/InternViT-6B-448px-V1-5/config.json: 45 of InternViT-6B's 48 blocks, RMSNorm, qk-norm, no qkv bias.
INTERN_VIT_6B: dict[str, Any] = {
    **INTERN_VIT_300M,
    "hidden_size": 3200,
    "intermediate_size": 12800,
    "num_attention_heads": 25,
    "num_hidden_layers": 45,
    "norm_type": "rms_norm",
    "qk_normalization": True,
    "qkv_bias": False,
    "initializer_factor": 0.1,
}


def lm_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict[str, Any]:
    """The shape fields of a decoder language model's config.json, under transformers' usual names."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
    }
