"""Phi-4-multimodal (microsoft/Phi-4-multimodal-instruct) in transformers' native form:
`Phi4MultimodalForCausalLM` (4.50 and later), model_type `phi4_multimodal`.

The checkpoint's own remote code (`Phi4MMForCausalLM`, model_type `phi4mm`) is a different module tree and is
not this family. The vision and speech LoRA adapters of the checkpoint are loaded separately (PEFT) and are not
part of the twin. Only the image path is exercised: the audio encoder is built (it takes its place in the map)
but no audio input is run.

An image is cut into `crop_size` crops plus a global view; the image embedding appends one separator column to
each row of 2x2-pooled features, for the crops and for the global view, with one separator between them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import IMAGE_ID, NativeFamily, prompt, tiny_lm, tiny_vision
from diag.twins.shrink import EAGER

TINY_IMAGE, TINY_PATCH = 56, 14  # 4x4 patches -> 2x2 pooled features per crop
AUDIO_WIDTH = 32


@register
class Phi4MultimodalFamily(NativeFamily):
    name = "phi4-multimodal"
    architectures = ("Phi4MultimodalForCausalLM",)
    model_types = ("phi4_multimodal",)
    loader = "Phi4MultimodalForCausalLM"
    config_class = "Phi4MultimodalConfig"
    since = "4.50.0"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = tiny_lm(config)
        vision = tiny_vision(out["vision_config"], image_size=TINY_IMAGE, patch_size=TINY_PATCH,
                             crop_size=TINY_IMAGE, image_token_id=IMAGE_ID)  # fmt: skip
        out["vision_config"] = vision
        audio = copy.deepcopy(dict(out.get("audio_config") or {}))
        audio.update(hidden_size=AUDIO_WIDTH, intermediate_size=2 * AUDIO_WIDTH, num_attention_heads=2,
                     ext_pw_out_channel=AUDIO_WIDTH, depthwise_separable_out_channel=AUDIO_WIDTH,
                     nemo_conv_channels=AUDIO_WIDTH, audio_token_id=IMAGE_ID - 1)  # fmt: skip
        out["audio_config"] = audio
        out.update(**EAGER)
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """One image exactly one crop in size: the crop and the global view, as the processor gives them."""
        config: Any = model.config
        vision: Any = config.vision_config
        crop = int(vision.crop_size)
        side = int(vision.image_size) // int(vision.patch_size)
        pooled = (side + side % 2) // 2
        count = 2 * pooled * (pooled + 1) + 1  # crop rows + separators, one separator, global rows + separators
        ids = [1, *([int(vision.image_token_id)] * count), 10, 11]
        return {
            "image": {
                **prompt(ids),
                "image_pixel_values": torch.randn(1, 2, 3, crop, crop, generator=generator),
                "image_sizes": torch.tensor([[crop, crop]]),
                "image_attention_mask": torch.ones(1, 2, side, side, dtype=torch.long),
            }
        }

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: phi4_multimodal loads with device_map '' by default and then calls .to('cuda') on the "
            "model, which undoes any split: load the model in a script with this map",
            "VLMEvalKit: its Phi-4-multimodal class loads the checkpoint's remote code (a different module tree); "
            "load the native form in a script with this map",
        ]
