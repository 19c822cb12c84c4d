"""Tiny configs: every layer count and module of the full config kept, every width shrunk.

Language models get hidden 64 (4 heads of 16; 2 key/value heads where the original groups them), MLP 128 and a
256-token vocabulary; vision towers get width 32 (2 heads), MLP 64 and an image of a few patches. Special token
ids move into the small vocabulary. Attention is eager, and there is no end-of-sequence token, so a greedy
`generate` always makes the number of tokens asked for.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

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


def tiny_clip(vision: Mapping[str, Any]) -> Config:
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


# -- the generic shrink of a transformers config (any native architecture) ---------------------------------------
_HEADS = ("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads")
_WIDTH = ("hidden_size", "embed_dim", "d_model", "n_embd")
_MLP = ("intermediate_size", "intermediate_size_mlp", "ffn_dim", "n_inner", "encoder_ffn_dim")
_EXPERT_MLP = ("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size")
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token")
_KEEP_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def mrope_sections(config: Mapping[str, Any]) -> list[int] | None:
    """The M-RoPE sections of a (text) config: `rope_scaling` (published form) or `rope_parameters` (5.x)."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, Mapping) and isinstance(rope.get("mrope_section"), list):
            return [int(v) for v in rope["mrope_section"]]
    return None


def tiny_mrope(sections: list[int]) -> tuple[list[int], int]:
    """The sections in their smallest whole proportions and the head dim they fill (twice their sum, at least
    16): [16, 24, 24] -> [2, 3, 3] and 16; Qwen3-VL's [24, 20, 20] -> [6, 5, 5] and 32."""
    divisor = math.gcd(*sections) if any(sections) else 1
    tiny = [v // divisor for v in sections]
    while 2 * sum(tiny) < 16:
        tiny = [2 * v for v in tiny]
    return tiny, 2 * sum(tiny)


def _set_mrope(config: dict[str, Any], sections: list[int]) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, dict) and "mrope_section" in rope:
            rope["mrope_section"] = list(sections)


def _sub_configs(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, value in config.items():
        if (
            isinstance(key, str)
            and key.endswith("_config")
            and isinstance(value, dict)
            and key != "quantization_config"
        ):
            yield key, value


def _is_vision(key: str, config: Mapping[str, Any]) -> bool:
    kind = str(config.get("model_type", ""))
    return "vision" in key or any(word in kind for word in ("vision", "vit", "clip", "siglip"))


def _tiny_text_fields(config: dict[str, Any], experts: int | None) -> int:
    """Shrink one language-model config in place; returns its new hidden size."""
    sections = mrope_sections(config)
    head_dim = 16
    if sections is not None:
        tiny_sections, head_dim = tiny_mrope(sections)
        _set_mrope(config, tiny_sections)
    else:  # rope scaling changes values, not devices, and some kinds are sized by the full head width
        if isinstance(config.get("rope_scaling"), dict):
            config["rope_scaling"] = {"rope_type": "default"}
        rope = config.get("rope_parameters")
        if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
            config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)}
    heads_key = next((k for k in _HEADS if k in config), None)
    hidden = LM_HEADS * head_dim
    if heads_key is not None:
        heads = int(config[heads_key] or 1)
        grouped = int(config.get("num_key_value_heads") or heads) < heads
        config[heads_key] = LM_HEADS
        if "num_key_value_heads" in config or grouped:
            config["num_key_value_heads"] = 2 if grouped else LM_HEADS
    for key in _WIDTH:
        if key in config:
            config[key] = hidden
    if "head_dim" in config:
        config["head_dim"] = head_dim
    for key in _MLP:
        if isinstance(config.get(key), int):
            config[key] = 2 * hidden
    for key in _EXPERT_MLP:
        if isinstance(config.get(key), int):
            config[key] = 32
    count = next((int(config[k]) for k in _EXPERTS if isinstance(config.get(k), int) and config[k] > 0), None)
    if count is not None:
        # transformers 5's default grouped-mm experts pick an integer histc for any non-CPU device, which the
        # CPU kernels under virtual GPUs lack; the eager loop takes the same devices (one layer, one GPU).
        config["experts_implementation"] = "eager"
    if experts is not None and count is not None:
        count = min(count, experts)
        for key in _EXPERTS:
            if isinstance(config.get(key), int) and config[key] > 0:
                config[key] = count
        for key in _TOP_K:
            if isinstance(config.get(key), int):
                config[key] = min(int(config[key]), count)
        for key in ("n_group", "topk_group"):  # DeepSeek's grouped routing: one group of the few experts
            if isinstance(config.get(key), int):
                config[key] = 1
    if "vocab_size" in config:
        config["vocab_size"] = TINY_VOCAB
    if "bos_token_id" in config:
        config["bos_token_id"] = 1
    if "pad_token_id" in config:
        config["pad_token_id"] = 0
    config["eos_token_id"] = None
    config.update(EAGER)
    return hidden


def _tiny_vision_fields(config: dict[str, Any], text_hidden: int) -> None:
    """Shrink one vision-tower config in place: width 32 (2 heads), MLP 64, an image of 2x2 patches where the
    tower has a fixed image size; its output width (the merger's) becomes the language model's."""
    merger_is_hidden = "embed_dim" in config and "hidden_size" in config  # Qwen2-VL: hidden_size = merger output
    for key in ("embed_dim",) if merger_is_hidden else _WIDTH:
        if key in config:
            config[key] = VISION_HIDDEN
    if merger_is_hidden:
        config["hidden_size"] = text_hidden
    for key in _HEADS:
        if key in config:
            config[key] = VISION_HEADS
    for key in _MLP:
        if isinstance(config.get(key), int):
            config[key] = VISION_MLP
    if "head_dim" in config:
        config["head_dim"] = VISION_HIDDEN // VISION_HEADS
    if "out_hidden_size" in config:
        config["out_hidden_size"] = text_hidden
    if "projection_dim" in config:
        config["projection_dim"] = 16
    patch = config.get("patch_size")
    if isinstance(config.get("image_size"), int) and isinstance(patch, int) and patch > 0:
        config["image_size"] = 2 * patch
    config.update(EAGER)


def _remap_ids(config: dict[str, Any], seen: dict[int, int]) -> None:
    """Special token ids (image, video, vision start/end ...) moved into the tiny vocabulary, the same id to the
    same new id everywhere, counting down from its last id."""
    for key, value in list(config.items()):
        if isinstance(value, dict):
            _remap_ids(value, seen)
        elif (isinstance(key, str) and key.endswith(("token_id", "token_index")) and key not in _KEEP_IDS
              and isinstance(value, int) and not isinstance(value, bool) and value >= TINY_VOCAB - 8):  # fmt: skip
            if value not in seen:
                seen[value] = TINY_VOCAB - 1 - len(seen)
            config[key] = seen[value]


def tiny_native(config: Mapping[str, Any], *, experts: int | None = 4) -> Config:
    """Any transformers config at tiny width: the language model (flat fields or `text_config`) at hidden 64
    (4 heads of 16, or of the head dim the M-RoPE sections need), MLP 128, expert MLPs 32, at most `experts`
    experts (None: every expert), a 256-token vocabulary; each vision tower at width 32; every layer count,
    layer-index list (full-attention blocks, DeepStack indexes, sparse steps) and tie setting kept."""
    out = copy.deepcopy(dict(config))
    subs = list(_sub_configs(out))
    texts = [sub for key, sub in subs if not _is_vision(key, sub)]
    text_hidden = LM_HIDDEN
    top_is_text = not texts or any(k in out for k in _HEADS)
    if top_is_text:
        text_hidden = _tiny_text_fields(out, experts)
    for sub in texts:
        text_hidden = _tiny_text_fields(sub, experts)
    for key, sub in subs:
        if _is_vision(key, sub):
            _tiny_vision_fields(sub, text_hidden)
            size, patch = sub.get("image_size"), sub.get("patch_size")
            if "image_seq_length" in out and isinstance(size, int) and isinstance(patch, int) and patch > 0:
                out["image_seq_length"] = (size // patch) ** 2  # LLaVA 4.45 expands the prompt when fewer
    if not top_is_text:
        out["eos_token_id"] = None
        if "vocab_size" in out:
            out["vocab_size"] = TINY_VOCAB
        out.update(EAGER)
    if any(sub.get("experts_implementation") for _, sub in subs):
        out["experts_implementation"] = "eager"  # a composite config hands it to its sub-configs
    _remap_ids(out, {})
    return out
