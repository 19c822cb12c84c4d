"""Llama 4 Scout / Maverick: `Llama4ForConditionalGeneration`, model_type `llama4` (transformers 4.51+).

A mixture-of-experts text model of 48 layers (Scout: a routed MoE with 16 experts and a shared expert in every
layer; Maverick: 128 experts in every other layer, `interleave_moe_layer_step` 2, dense MLPs between), every
fourth layer without RoPE (`no_rope_layers`), and a 34-layer vision encoder at 336 px whose patches are
pixel-shuffled (ratio 0.5) to 144 tokens per tile. The processor expands an image to `<|image_start|>`, for
a multi-tile image each tile's patch tokens with tile separators, then `<|image|>` and the global view's patch
tokens, then `<|image_end|>` (transformers' Llama4Processor); the patch token is `image_token_index`.

The installed transformers stores each MoE layer's experts as one module of stacked weights
(`feed_forward.experts.gate_up_proj`), so the tiny twin keeps the module tree with 4 experts; the layer
pattern (which layers are MoE, which skip RoPE) is kept as published.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import EAGER, TINY_HEAD_DIM, VISION_HIDDEN, NativeFamily, prompt, tiny_lm, tiny_vision

TINY_EXPERTS = 4
TINY_IMAGE, TINY_PATCH = 56, 14  # 4x4 patches, pixel-shuffled to 2x2 = 4 tokens per tile
# Tiny special tokens: <|image_start|>, <|image_end|>, <|tile_x_separator|>, <|tile_y_separator|>, <|image|>,
# and the patch token (image_token_index).
BOI, EOI, TILE_X, TILE_Y, IMAGE_MARK, PATCH = 249, 250, 251, 252, 253, 255


@register
class Llama4(NativeFamily):
    name = "llama4"
    architectures = ("Llama4ForConditionalGeneration",)
    model_types = ("llama4",)
    loader = "Llama4ForConditionalGeneration"
    config_class = "Llama4Config"
    since = "4.51"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        text = dict(out.get("text_config") or {})
        experts = int(text.get("num_local_experts") or TINY_EXPERTS)
        tiny = tiny_lm(text, head_dim=TINY_HEAD_DIM, intermediate_size_mlp=128, attention_chunk_size=8,
                       num_local_experts=min(experts, TINY_EXPERTS))  # fmt: skip
        out["text_config"] = tiny
        if self.unavailable(out) is None and self.has_per_expert_modules(_two_layers(out)):
            tiny["num_local_experts"] = experts  # a module per expert: the count is part of the tree, keep it
        vision = dict(out.get("vision_config") or {})
        ratio = float(vision.get("pixel_shuffle_ratio") or 0.5)
        shuffled = int(VISION_HIDDEN / ratio**2)  # the adapter's input: the pixel-shuffled channels
        out["vision_config"] = tiny_vision(vision, intermediate_size=shuffled, image_size=TINY_IMAGE,
                                           patch_size=TINY_PATCH, projector_input_dim=VISION_HIDDEN,
                                           projector_output_dim=VISION_HIDDEN,
                                           vision_output_dim=VISION_HIDDEN)  # fmt: skip
        out.update(boi_token_index=BOI, eoi_token_index=EOI, image_token_index=PATCH, pad_token_id=0, **EAGER)
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """One wide image (two tiles side by side plus the global view), then two images in one prompt."""
        return {"image": _inputs(model, generator, [(1, 2)]), "images": _inputs(model, generator, [(1, 2), (1, 1)])}

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: `--model llama4_scout` loads with device_map='auto' in one process and one copy per GPU "
            "(cuda:{local rank}) with several; --model_args takes only a string device_map, so load the model in "
            f"a script with the map in {map_path}",
            "VLMEvalKit: Llama 4 runs through vLLM or LMDeploy there (tensor parallel, no device map); the map "
            "applies when you load it with transformers yourself",
        ]


def _two_layers(tiny: Mapping[str, Any]) -> Config:
    """A quick probe of the expert modules: two text layers (one MoE layer at any interleave step), one vision."""
    probe = copy.deepcopy(dict(tiny))
    probe["text_config"] = {**probe["text_config"], "num_hidden_layers": 2}
    probe["vision_config"] = {**probe.get("vision_config", {}), "num_hidden_layers": 1}
    return probe


def _tokens_per_tile(vision: Any) -> int:
    patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
    return int(patches * float(vision.pixel_shuffle_ratio) ** 2)


def _inputs(model: nn.Module, generator: torch.Generator, ratios: list[tuple[int, int]]) -> Inputs:
    """`ratios` gives each image's tiles (rows, columns); a multi-tile image also has its global view."""
    config: Any = model.config
    vision = config.vision_config
    per_tile = [int(config.image_token_index)] * _tokens_per_tile(vision)
    ids = [1, 5, 6]
    crops = 0
    for rows, cols in ratios:
        ids.append(BOI)
        if rows * cols > 1:
            for _row in range(rows):
                for col in range(cols):
                    ids += per_tile + ([TILE_X] if col < cols - 1 else [])
                ids.append(TILE_Y)
            crops += rows * cols
        ids += [IMAGE_MARK, *per_tile, EOI]
        crops += 1
    ids += [10, 11, 12]
    inputs = prompt(ids)
    size = int(vision.image_size)
    inputs["pixel_values"] = torch.randn(crops, int(vision.num_channels), size, size, generator=generator)
    return inputs


__all__ = ["Llama4"]
