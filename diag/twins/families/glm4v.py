"""GLM-4.1V (zai-org/GLM-4.1V-9B-Thinking): the installed transformers' `Glm4vForConditionalGeneration` (4.53 and
later), model_type `glm4v`.

Qwen2-VL-style inputs: flattened patches with their `image_grid_thw` / `video_grid_thw`, one image token per merged
patch, M-RoPE positions (transformers 5 reads the modality of each token from the processor's
`mm_token_type_ids`). A video is a run of frames, each written as an image between `<|begin_of_image|>` and
`<|end_of_image|>` followed by its timestamp, all inside `<|begin_of_video|>` ... `<|end_of_video|>`; its tokens
are image tokens (type 2 in `mm_token_type_ids`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import (
    END_ID,
    IMAGE_ID,
    START_ID,
    VIDEO_END_ID,
    VIDEO_ID,
    VIDEO_START_ID,
    NativeFamily,
    accepts,
    prompt,
    tiny_lm,
    tiny_vision,
)
from diag.twins.shrink import EAGER, LM_HEADS, LM_HIDDEN

GRID_H = GRID_W = 4  # patches per side of the tiny image and of each video frame
VIDEO_FRAMES = 2  # temporal groups (each `temporal_patch_size` frames): one timestamped frame each
_TIMESTAMP_ID = 30


@register
class Glm4vFamily(NativeFamily):
    name = "glm4v"
    architectures = ("Glm4vForConditionalGeneration",)
    model_types = ("glm4v",)
    loader = "Glm4vForConditionalGeneration"
    config_class = "Glm4vConfig"
    since = "4.53.0"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        text = tiny_lm(out["text_config"])
        # The rotary half-width is split over (t, h, w); keep the published proportions' order at tiny width.
        rotary = int(LM_HIDDEN // LM_HEADS * float(text.get("partial_rotary_factor", 1.0))) // 2
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": [rotary // 2, rotary // 4, rotary // 4]}
        text["rope_theta"] = float(out["text_config"].get("rope_theta", 10000.0))
        out["text_config"] = text
        vision = tiny_vision(out["vision_config"], heads_field="num_heads", out_hidden_size=LM_HIDDEN,
                             image_size=GRID_H * int(out["vision_config"]["patch_size"]))  # fmt: skip
        vision.pop("num_attention_heads", None)  # GLM-4.1V's tower names its head count `num_heads` only
        out["vision_config"] = vision
        out.update(image_start_token_id=START_ID, image_end_token_id=END_ID, video_start_token_id=VIDEO_START_ID,
                   video_end_token_id=VIDEO_END_ID, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
                   pad_token_id=0, **EAGER)  # fmt: skip
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        return {"image": _image(model, generator), "video": _video(model, generator)}

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: glm4v loads this class with device_map='auto' in one process and "
            "cuda:{local_process_index} in several; its --model_args device_map takes a string only, so load the "
            "model in a script with this map",
            "VLMEvalKit: pass this map to the from_pretrained call of its GLM-4.1V class, or load the model in a "
            "script with it",
        ]


def _patch_dim(model: nn.Module) -> tuple[int, int]:
    config: Any = model.config
    vision: Any = config.vision_config
    merge = int(vision.spatial_merge_size)
    return int(vision.in_channels) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2, merge


def _with_types(model: nn.Module, inputs: Inputs, types: list[int]) -> Inputs:
    if accepts(model, "mm_token_type_ids"):
        # transformers 5 places M-RoPE positions by the processor's token types (1 image, 2 video).
        inputs["mm_token_type_ids"] = torch.tensor([types], dtype=torch.int32)
    return inputs


def _image(model: nn.Module, generator: torch.Generator) -> Inputs:
    patch_dim, merge = _patch_dim(model)
    count = GRID_H * GRID_W // merge**2
    ids = [1, START_ID, *([IMAGE_ID] * count), END_ID, 10, 11]
    types = [1 if i == IMAGE_ID else 0 for i in ids]
    inputs = {
        **prompt(ids),
        "pixel_values": torch.randn(GRID_H * GRID_W, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[1, GRID_H, GRID_W]]),
    }
    return _with_types(model, inputs, types)


def _video(model: nn.Module, generator: torch.Generator) -> Inputs:
    patch_dim, merge = _patch_dim(model)
    per_frame = GRID_H * GRID_W // merge**2
    ids = [1, VIDEO_START_ID]
    for _ in range(VIDEO_FRAMES):
        ids += [START_ID, *([IMAGE_ID] * per_frame), END_ID, _TIMESTAMP_ID]
    ids += [VIDEO_END_ID, 10, 11]
    types = [2 if i == IMAGE_ID else 0 for i in ids]
    inputs = {
        **prompt(ids),
        "pixel_values_videos": torch.randn(VIDEO_FRAMES * GRID_H * GRID_W, patch_dim, generator=generator),
        "video_grid_thw": torch.tensor([[VIDEO_FRAMES, GRID_H, GRID_W]]),
    }
    return _with_types(model, inputs, types)
