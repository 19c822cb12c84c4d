"""Llama 3.2 Vision (11B/90B): `MllamaForConditionalGeneration`, model_type `mllama` (transformers 4.45+).

A tiled ViT (`vision_model`: 32 local and 8 global layers at 560 px, patch 14, up to 4 tiles chosen by
aspect ratio) whose output reaches the text model only through cross-attention layers inserted among its
self-attention layers (`cross_attention_layers`, counted in `num_hidden_layers`). The processor writes one
`<|image|>` token per image (the `vocab_size` id, one of 8 extra embedding rows) and hands the model
`pixel_values` (batch, images, tiles, 3, H, W), `aspect_ratio_ids`, `aspect_ratio_mask` and a
`cross_attention_mask` (batch, tokens, images, tiles) that lets the tokens from an image's `<|image|>` on attend
to its tiles (transformers' MllamaProcessor).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import (
    EAGER,
    TINY_HEAD_DIM,
    TINY_VOCAB,
    VISION_HIDDEN,
    NativeFamily,
    prompt,
    tiny_lm,
    tiny_vision,
)

TINY_IMAGE, TINY_PATCH = 28, 14  # 2x2 patches (+ the class token) per tile
# VLMEvalKit's split_model for Llama-3.2-90B (vlmeval/vlm/llama_vision.py, commit f5031f66): 100 layers spread
# over the process's GPUs, 5 fewer on the first (it holds the vision model) and 7 fewer on the last.
_VLMEVALKIT_LAYERS, _FIRST_LESS, _LAST_LESS = 100, 5, 7
# The module names its split_model writes: those of transformers 4.45, which it was written for.
VLMEVALKIT_NAMES: dict[str, str | None] = {
    "layers": "language_model.model.layers",
    "embed": "language_model.model.embed_tokens",
    "rotary": "language_model.model.rotary_emb",
    "norm": "language_model.model.norm",
    "head": "language_model.lm_head",
    "vision": "vision_model",
    "projector": "multi_modal_projector",
}


@register
class Mllama(NativeFamily):
    name = "mllama"
    architectures = ("MllamaForConditionalGeneration",)
    model_types = ("mllama",)
    loader = "MllamaForConditionalGeneration"
    config_class = "MllamaConfig"
    since = "4.45"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        text = dict(out.get("text_config") or {})
        out["text_config"] = tiny_lm(text, head_dim=TINY_HEAD_DIM)
        if text.get("rope_scaling"):  # 4.45's MllamaRotaryEmbedding reads its rope_type (no default there)
            out["text_config"]["rope_scaling"] = copy.deepcopy(text["rope_scaling"])
        vision = dict(out.get("vision_config") or {})
        indices = list(vision.get("intermediate_layers_indices") or [3, 7, 15, 23, 30])
        out["vision_config"] = tiny_vision(vision, heads_field="attention_heads", image_size=TINY_IMAGE,
                                           patch_size=TINY_PATCH,
                                           # the projector takes the last layer and each intermediate one
                                           vision_output_dim=VISION_HIDDEN * (len(indices) + 1))  # fmt: skip
        # `<|image|>` is the first id past the text vocabulary, as 128256 is past Llama 3's 128256 tokens.
        out.update(image_token_index=TINY_VOCAB, pad_token_id=0, **EAGER)
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """One wide image (2 of the 4 tiles, aspect ratio 1:2), then two images in one prompt (the processor
        takes several; lmms-eval's `llama_vision` passes every image, video frames included)."""
        return {"image": _inputs(model, generator, [(1, 2)]), "images": _inputs(model, generator, [(1, 2), (1, 1)])}

    def forced_map(self, meta_model: nn.Module, gpus: int) -> dict[str, Any] | None:
        """VLMEvalKit's own split for Llama-3.2-90B-Vision (it loads every 90B with it, no AUTO_SPLIT needed):
        the vision model and embeddings on the first GPU, the projector, norm and head on the last, under the
        built model's module names (the installed transformers'). VLMEvalKit writes 4.45's names, which 5.x
        renamed; the placement, not the spelling, is what the twin runs (kit_advice says what to rename)."""
        if _text_layers(meta_model) != _VLMEVALKIT_LAYERS or gpus < 2:
            return None
        return vlmevalkit_90b_split(gpus, installed_names(meta_model))

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: `--model llama_vision` loads on one device by default (device_map ''); device_map=auto "
            "splits it in one process; --model_args takes only a string device_map, so load the model in a "
            f"script with the map in {map_path}",
            "VLMEvalKit: `llama_vision` splits every 90B with its own split_model (vlmeval/vlm/llama_vision.py) "
            "and loads the 11B on one GPU unless AUTO_SPLIT=1 (then device_map='auto'); to use this map, return it "
            "from split_model or load the model in a script. split_model's keys are transformers 4.45's module "
            "names (`language_model.model.layers.N`); a transformers that names them `model.language_model."
            "layers.N` (5.x) does not load with them, so use the names in this map",
        ]


def vlmevalkit_90b_split(gpus: int, names: Mapping[str, str | None] = VLMEVALKIT_NAMES) -> dict[str, int]:
    """VLMEvalKit's split_model for the 90B over `gpus` GPUs of rank 0: its per-GPU layer counts and where it puts
    each other part, under `names` (by default the names it writes: 4.45's; `installed_names` gives a built
    model's). A part named None (no rotary module) gets no key."""
    total = _VLMEVALKIT_LAYERS + _FIRST_LESS + _LAST_LESS
    per_gpu = [total // gpus] * gpus
    per_gpu[-1] = total - sum(per_gpu[:-1])
    per_gpu[0] -= _FIRST_LESS
    per_gpu[-1] -= _LAST_LESS
    device_map: dict[str, int] = {}
    layer = 0
    for gpu, count in enumerate(per_gpu):
        for _ in range(count):
            device_map[f"{names['layers']}.{layer}"] = gpu
            layer += 1
    last = gpus - 1
    parts = {"vision": 0, "embed": 0, "rotary": 0, "norm": last, "head": last, "projector": last}
    device_map.update({str(names[part]): gpu for part, gpu in parts.items() if names[part] is not None})
    return device_map


def installed_names(model: nn.Module) -> dict[str, str | None]:
    """The module names of the parts VLMEvalKit's split places, read from a built Mllama model (the installed
    transformers': `language_model.model.layers` in 4.45, `model.language_model.layers` in 5.x)."""
    from diag.twins.layout import language_model_layout

    layout = language_model_layout(model)
    vision = {name.rpartition(".")[2]: name for name in layout.vision}
    return {"layers": layout.layers, "embed": layout.embed, "rotary": layout.rotary, "norm": layout.norm,
            "head": layout.head, "vision": vision["vision_model"],
            "projector": vision["multi_modal_projector"]}  # fmt: skip


def _text_layers(model: nn.Module) -> int:
    config: Any = getattr(model, "config", None)
    text = getattr(config, "text_config", None)
    return int(getattr(text, "num_hidden_layers", 0) or 0)


def _inputs(model: nn.Module, generator: torch.Generator, ratios: list[tuple[int, int]]) -> Inputs:
    """`ratios` gives each image's tiles (rows, columns), as the processor picks them from the image's size."""
    config: Any = model.config
    vision = config.vision_config
    supported = [tuple(r) for r in vision.supported_aspect_ratios]
    tiles, size = int(vision.max_num_tiles), int(vision.image_size)
    images = len(ratios)
    # <|begin_of_text|>, the header tokens, one <|image|> per image, then the question.
    ids = [1, 5, 6, *([int(config.image_token_index)] * images), 10, 11, 12]
    inputs = prompt(ids)
    first_image = 3
    pixel_values = torch.zeros(1, images, tiles, int(vision.num_channels), size, size)
    aspect_ids = torch.zeros(1, images, dtype=torch.long)
    aspect_mask = torch.zeros(1, images, tiles, dtype=torch.long)
    cross_mask = torch.zeros(1, len(ids), images, tiles, dtype=torch.long)
    for image, (rows, cols) in enumerate(ratios):
        used = rows * cols
        pixel_values[0, image, :used] = torch.randn(used, int(vision.num_channels), size, size, generator=generator)
        aspect_ids[0, image] = supported.index((rows, cols)) + 1  # 0 is padding
        aspect_mask[0, image, :used] = 1
        # Each image is seen from its own <|image|> token to the end (consecutive images extend to the end).
        cross_mask[0, first_image + image :, image, :used] = 1
    inputs.update(pixel_values=pixel_values, aspect_ratio_ids=aspect_ids, aspect_ratio_mask=aspect_mask,
                  cross_attention_mask=cross_mask)  # fmt: skip
    return inputs


__all__ = ["VLMEVALKIT_NAMES", "Mllama", "installed_names", "vlmevalkit_90b_split"]
