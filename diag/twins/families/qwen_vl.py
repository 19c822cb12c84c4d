"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE: the installed transformers' classes, one family per model type.

Each runs two input sets, as the kits' processors make them: "image" (one image of 4x4 patches: flattened
patches, `image_grid_thw`, `<|vision_start|>` + one pad per merged patch + `<|vision_end|>`) and "video" (two
temporal patches, i.e. four frames, of 4x4: `pixel_values_videos`, `video_grid_thw`, the video pads; Qwen2.5-VL
also `second_per_grid_ts`; Qwen3-VL one timestamp + `<|vision_start|>` + pads + `<|vision_end|>` per temporal
patch, as its processor writes it). transformers 5 also takes the processor's `mm_token_type_ids` (1 image,
2 video) to place M-RoPE positions. Not exercised: several images or videos in one prompt, other grid shapes.

The tiny shrink keeps every layer and layer-index list of the real config: M-RoPE sections in their proportions
at the tiny head dim, Qwen2.5-VL's window size and full-attention blocks, Qwen3-VL's DeepStack taps and learned
position grid, and the MoE layers (at most 4 experts where transformers fuses the experts of a layer into one
module, so the tree is the real tree; every expert where it has a module per expert).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import NativeFamily, accepts, prompt
from diag.twins.shrink import QWEN_IDS

_GRID = (4, 4)  # patches per side of the image and of each video frame
_VIDEO_T = 2  # temporal patches of the video (two frames each)


def flat_qwen2_vl(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Qwen2-VL config in the published flat form: transformers 5 saves the text fields nested in
    `text_config`, which 4.45 would ignore (and build its defaults); 5.x still reads the flat form."""
    fields = copy.deepcopy(dict(config))
    text = fields.pop("text_config", None)
    if isinstance(text, dict):
        for key, value in text.items():
            if key != "model_type":
                fields.setdefault(key, value)
    return fields


class _QwenVL(NativeFamily):
    """What the Qwen-VL model types share; `flat` says the published config is flat (text fields at the top)."""

    flat: ClassVar[bool] = True
    # The video prompt: one group of pads for the whole video (Qwen2/2.5-VL) or one per temporal patch, each
    # after its timestamp (Qwen3-VL).
    video_per_frame: ClassVar[bool] = False

    def hf_fields(self, config: Mapping[str, Any]) -> Config:
        return flat_qwen2_vl(config) if self.flat else dict(config)

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = super().tiny_config(config)
        out.update(QWEN_IDS)
        text = out.get("text_config")
        if isinstance(text, dict):
            for key in QWEN_IDS:
                if key in text:
                    text[key] = QWEN_IDS[key]
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        config: Any = model.config
        vision = config.vision_config
        merge = int(vision.spatial_merge_size)
        channels = int(getattr(vision, "in_channels", None) or getattr(vision, "in_chans", None) or 3)
        patch_dim = channels * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
        per_frame = _GRID[0] * _GRID[1] // (merge * merge)
        start, end = int(config.vision_start_token_id), int(config.vision_end_token_id)
        image_token, video_token = int(config.image_token_id), int(config.video_token_id)

        image_ids = [1, start, *([image_token] * per_frame), end, 10, 11]
        image: Inputs = {
            **prompt(image_ids),
            "pixel_values": torch.randn(_GRID[0] * _GRID[1], patch_dim, generator=generator),
            "image_grid_thw": torch.tensor([[1, *_GRID]]),
        }
        if self.video_per_frame:
            video_ids = [1]
            for frame in range(_VIDEO_T):
                video_ids += [20 + frame, start, *([video_token] * per_frame), end]  # "<t seconds>" as one token
            video_ids += [10, 11]
        else:
            video_ids = [1, start, *([video_token] * (_VIDEO_T * per_frame)), end, 10, 11]
        video: Inputs = {
            **prompt(video_ids),
            "pixel_values_videos": torch.randn(_VIDEO_T * _GRID[0] * _GRID[1], patch_dim, generator=generator),
            "video_grid_thw": torch.tensor([[_VIDEO_T, *_GRID]]),
        }
        if accepts(model, "second_per_grid_ts"):
            video["second_per_grid_ts"] = torch.tensor([1.0])
        if accepts(model, "mm_token_type_ids"):
            # transformers 5 wants the processor's token types (1 image, 2 video) to place M-RoPE positions.
            image["mm_token_type_ids"] = (image["input_ids"] == image_token).int()
            video["mm_token_type_ids"] = 2 * (video["input_ids"] == video_token).int()
        return {"image": image, "video": video}


@register
class Qwen2VL(_QwenVL):
    name = "qwen2-vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    model_types = ("qwen2_vl",)
    loader = "Qwen2VLForConditionalGeneration"
    config_class = "Qwen2VLConfig"
    since = "4.45"


@register
class Qwen2_5VL(_QwenVL):
    name = "qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    model_types = ("qwen2_5_vl",)
    loader = "Qwen2_5_VLForConditionalGeneration"
    config_class = "Qwen2_5_VLConfig"
    since = "4.49"


@register
class Qwen3VL(_QwenVL):
    name = "qwen3-vl"
    architectures = ("Qwen3VLForConditionalGeneration",)
    model_types = ("qwen3_vl",)
    loader = "Qwen3VLForConditionalGeneration"
    config_class = "Qwen3VLConfig"
    since = "4.57"
    flat = False
    video_per_frame = True


@register
class Qwen3VLMoe(_QwenVL):
    name = "qwen3-vl-moe"
    architectures = ("Qwen3VLMoeForConditionalGeneration",)
    model_types = ("qwen3_vl_moe",)
    loader = "Qwen3VLMoeForConditionalGeneration"
    config_class = "Qwen3VLMoeConfig"
    since = "4.57"
    flat = False
    video_per_frame = True
