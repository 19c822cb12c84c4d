"""Tiny configs: every layer count and module of the full config kept, every width shrunk.

Language models get hidden 64 (4 heads of 16; 2 key/value heads where the original groups them), MLP 128 and a
256-token vocabulary; vision towers get width 32 (2 heads), MLP 64 and an image of a few patches. Special token
ids move into the small vocabulary. Attention is eager, and there is no end-of-sequence token, so a greedy
`generate` always makes the number of tokens asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from diag.twins.hf import flat_qwen2_vl

Config = dict[str, Any]

TINY_VOCAB = 256
LM_HIDDEN, LM_HEADS, LM_MLP = 64, 4, 128
VISION_HIDDEN, VISION_HEADS, VISION_MLP = 32, 2, 64
IMAGE_TOKEN = 255  # LLaVA <image>, InternVL <IMG_CONTEXT>
IMG_START, IMG_END = 253, 254  # InternVL <img>, </img>
IM_END = 252  # InternVL's conversation separator <|im_end|>: the eos_token_id its chat passes to generate
QWEN_IDS = {
    "vision_start_token_id": 248,
    "vision_end_token_id": 249,
    "vision_token_id": 250,
    "image_token_id": 251,
    "video_token_id": 252,
}
EAGER = {"attn_implementation": "eager"}


def tiny_text(text: Mapping[str, Any]) -> Config:
    """A decoder-only LM config (Llama, Qwen2, InternLM2 fields) at tiny width, same layer count."""
    out = copy.deepcopy(dict(text))
    heads = int(out.get("num_attention_heads", 1))
    grouped = int(out.get("num_key_value_heads") or heads) < heads
    out.pop("head_dim", None)
    out.update(
        hidden_size=LM_HIDDEN,
        intermediate_size=LM_MLP,
        num_attention_heads=LM_HEADS,
        num_key_value_heads=2 if grouped else LM_HEADS,
        vocab_size=TINY_VOCAB,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
        **EAGER,
    )
    # Rope scaling changes values, not devices, and some kinds (Phi-3 longrope) are sized by the full head width.
    out.pop("rope_scaling", None)
    return out


def _tiny_clip(vision: Mapping[str, Any]) -> Config:
    out = copy.deepcopy(dict(vision))
    out.update(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_MLP,
        num_attention_heads=VISION_HEADS,
        image_size=28,
        patch_size=14,
        projection_dim=16,
        **EAGER,
    )
    return out


def tiny_llava(config: Mapping[str, Any]) -> Config:
    out = copy.deepcopy(dict(config))
    full_image = int(out["vision_config"].get("image_size", 336))
    out["text_config"] = tiny_text(out["text_config"])
    out["vision_config"] = _tiny_clip(out["vision_config"])
    tiny_image = int(out["vision_config"]["image_size"])
    out.update(image_token_index=IMAGE_TOKEN, image_seq_length=(tiny_image // 14) ** 2, pad_token_id=0, **EAGER)
    if "image_grid_pinpoints" in out:
        out["image_grid_pinpoints"] = [
            [h * tiny_image // full_image, w * tiny_image // full_image] for h, w in out["image_grid_pinpoints"]
        ]
    return out


def tiny_qwen2_vl(config: Mapping[str, Any]) -> Config:
    out = tiny_text(flat_qwen2_vl(config))
    out.pop("rope_parameters", None)
    head_dim = LM_HIDDEN // LM_HEADS
    out["rope_scaling"] = {"type": "mrope", "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}
    out.update(QWEN_IDS)
    vision = copy.deepcopy(dict(out["vision_config"]))
    vision.update(embed_dim=VISION_HIDDEN, num_heads=VISION_HEADS, hidden_size=LM_HIDDEN, **EAGER)
    out["vision_config"] = vision
    return out


def tiny_internvl(config: Mapping[str, Any]) -> Config:
    out = copy.deepcopy(dict(config))
    out["llm_config"] = tiny_text(out["llm_config"])
    vision = copy.deepcopy(dict(out["vision_config"]))
    vision.update(
        hidden_size=VISION_HIDDEN, intermediate_size=VISION_MLP, num_attention_heads=VISION_HEADS, image_size=56
    )
    out["vision_config"] = vision
    out["force_image_size"] = 56  # 4x4 patches -> pixel shuffle 0.5 -> 4 image tokens
    out["img_context_token_id"] = IMAGE_TOKEN
    return out


def tiny_cogvlm(config: Mapping[str, Any]) -> Config:
    out = tiny_text(config)
    vision = copy.deepcopy(dict(out["vision_config"]))
    vision.update(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_MLP,
        num_heads=VISION_HEADS,
        image_size=28,
        patch_size=14,
        num_positions=(28 // 14) ** 2 + 1,
    )
    out["vision_config"] = vision
    return out


TINY: dict[str, Callable[[Mapping[str, Any]], Config]] = {
    "llava": tiny_llava,
    "llava-next": tiny_llava,
    "qwen2-vl": tiny_qwen2_vl,
    "internvl-chat": tiny_internvl,
    "cogvlm": tiny_cogvlm,
}
