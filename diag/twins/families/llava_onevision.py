"""LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): SigLIP + Qwen2, anyres-max images and pooled videos.

The installed transformers' `LlavaOnevisionForConditionalGeneration` (4.45 and later). The checkpoints of the
LLaVA-NeXT repository (lmms-lab/llava-onevision-qwen2-*-ov, loaded by lmms-eval's `llava_onevision` class through
that repository's own builder) hold the same weights under other module names; this family builds the HF form.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import (
    IMAGE_ID,
    VIDEO_ID,
    NativeFamily,
    prompt,
    tiny_lm,
    tiny_vision,
)
from diag.twins.shrink import EAGER

TINY_IMAGE, TINY_PATCH = 56, 14  # 4x4 patches: pooling a video frame (2x2) keeps more than one token
VIDEO_FRAMES = 2


@register
class LlavaOnevisionFamily(NativeFamily):
    name = "llava-onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    model_types = ("llava_onevision",)
    loader = "LlavaOnevisionForConditionalGeneration"
    config_class = "LlavaOnevisionConfig"
    since = "4.45.0"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        full_image = int(out["vision_config"].get("image_size", 384))
        out["text_config"] = tiny_lm(out["text_config"])
        out["vision_config"] = tiny_vision(out["vision_config"], image_size=TINY_IMAGE, patch_size=TINY_PATCH)
        scale = TINY_IMAGE / full_image
        pinpoints = out.get("image_grid_pinpoints") or []
        out["image_grid_pinpoints"] = [[round(h * scale), round(w * scale)] for h, w in pinpoints]
        out.update(image_token_index=IMAGE_ID, video_token_index=VIDEO_ID, pad_token_id=0, **EAGER)
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        return {"image": _image(model, generator), "video": _video(model, generator)}

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: llava_hf loads llava-hf/llava-onevision-*-hf with this class; its --model_args device_map "
            "takes a string only, so load the model in a script with this map. The llava_onevision class loads "
            "lmms-lab/llava-onevision-* through the LLaVA-NeXT repository (other module names: map those); "
            "llava_onevision1_5 is a different model (LLaVA-OneVision-1.5)",
            "VLMEvalKit: pass this map to the from_pretrained call of its LLaVA-OneVision class, or load the model "
            "in a script with it",
        ]


def _side(model: nn.Module) -> tuple[int, int]:
    config: Any = model.config
    vision = config.vision_config
    return int(vision.image_size), int(vision.image_size) // int(vision.patch_size)


def _image(model: nn.Module, generator: torch.Generator) -> Inputs:
    """One image exactly the size of the 1x2 anyres pinpoint, so unpadding keeps every feature: the base tile's
    features, then each row of the 1x2 grid plus the newline, as the processor counts them."""
    config: Any = model.config
    image_size, per_side = _side(model)
    height, width = image_size, 2 * image_size
    if [height, width] not in [list(p) for p in config.image_grid_pinpoints]:
        raise ValueError(f"no {height}x{width} pinpoint in image_grid_pinpoints")
    rows, cols = 1, 2
    count = per_side**2 + (rows * per_side) * (cols * per_side + 1)
    ids = [1, *([int(config.image_token_index)] * count), 10, 11, 12]
    return {
        **prompt(ids),
        "pixel_values": torch.randn(1, 1 + rows * cols, 3, image_size, image_size, generator=generator),
        "image_sizes": torch.tensor([[height, width]]),
    }


def _video(model: nn.Module, generator: torch.Generator) -> Inputs:
    """Two frames: each frame's features pooled 2x2, then one newline for the whole video."""
    config: Any = model.config
    image_size, per_side = _side(model)
    pooled = -(-per_side // 2)
    count = VIDEO_FRAMES * pooled**2 + 1
    ids = [1, *([int(config.video_token_index)] * count), 10, 11, 12]
    return {
        **prompt(ids),
        "pixel_values_videos": torch.randn(1, VIDEO_FRAMES, 3, image_size, image_size, generator=generator),
    }
