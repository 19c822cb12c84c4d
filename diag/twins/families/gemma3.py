"""Gemma 3 (4B/12B/27B): `Gemma3ForConditionalGeneration`, model_type `gemma3` (transformers 4.50+).

A SigLIP tower (27 layers at 896 px, patch 14), a projector that average-pools its 64x64 patches to
`mm_tokens_per_image` (256) soft tokens, and a Gemma 3 text model whose layers alternate five sliding-window
layers with one global layer (`layer_types`, from `sliding_window_pattern` 6), with the head tied to the
embeddings. The processor expands each image to `<start_of_image>`, `mm_tokens_per_image` image tokens and
`<end_of_image>`, with `token_type_ids` 1 on the image tokens (transformers' Gemma3Processor).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import EAGER, TINY_HEAD_DIM, NativeFamily, accepts, prompt, tiny_lm, tiny_vision

# Tiny special tokens (the real ones, 255999/256000/262144, are outside the tiny vocabulary).
BOI, EOI, IMAGE = 253, 254, 255
NEWLINES = 108 % 256  # "\n\n" around each image, as the processor writes it (id 108 in the real vocabulary)
TINY_IMAGE, TINY_PATCH, TINY_TOKENS = 56, 14, 4  # 4x4 patches pooled to 2x2 soft tokens


@register
class Gemma3(NativeFamily):
    name = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    model_types = ("gemma3",)
    loader = "Gemma3ForConditionalGeneration"
    config_class = "Gemma3Config"
    since = "4.50"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        text = dict(out.get("text_config") or {})
        # The real pattern, written out: the tiny config must not fall back on another release's default.
        layers = int(text.get("num_hidden_layers", 26))
        pattern = int(text.get("sliding_window_pattern") or 6)
        types = text.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
        ]
        out["text_config"] = tiny_lm(text, head_dim=TINY_HEAD_DIM, query_pre_attn_scalar=16, sliding_window=8,
                                     layer_types=list(types), bos_token_id=2)  # fmt: skip
        out["vision_config"] = tiny_vision(out.get("vision_config") or {}, image_size=TINY_IMAGE, patch_size=TINY_PATCH)
        out.update(mm_tokens_per_image=TINY_TOKENS, boi_token_index=BOI, eoi_token_index=EOI,
                   image_token_index=IMAGE, eos_token_id=None, pad_token_id=0, **EAGER)  # fmt: skip
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """One image, then two (Gemma 3 takes several images in one prompt; lmms-eval's `gemma3` passes them)."""
        return {"image": _inputs(model, generator, 1), "images": _inputs(model, generator, 2)}

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: `--model gemma3` loads with device_map='auto' by default (one process) and then calls "
            ".to('cuda') on the model; with several processes it loads one copy per GPU (cuda:{local rank}); "
            "--model_args takes only a string device_map, so load the model in a script with this map",
            "VLMEvalKit: `Gemma3` (vlmeval/vlm/gemma.py) loads with device_map='cuda', one GPU (or through vLLM "
            f"with use_vllm=True); to run it split, load it in a script with the map in {map_path}",
        ]


def _inputs(model: nn.Module, generator: torch.Generator, images: int) -> Inputs:
    config: Any = model.config
    vision = config.vision_config
    size = int(vision.image_size)
    count = int(config.mm_tokens_per_image)
    image_id = int(config.image_token_index)
    ids = [2, 10, 11]
    for _ in range(images):
        ids += [NEWLINES, int(config.boi_token_index), *([image_id] * count), int(config.eoi_token_index), NEWLINES]
    ids += [12, 13]
    inputs = prompt(ids)
    inputs["pixel_values"] = torch.randn(images, int(vision.num_channels), size, size, generator=generator)
    if accepts(model, "token_type_ids"):  # the processor's: 1 on image tokens (bidirectional attention there)
        inputs["token_type_ids"] = (inputs["input_ids"] == image_id).long()
    return inputs


__all__ = ["Gemma3"]
