"""InternVL in transformers' native form (OpenGVLab/InternVL3-*-hf): `InternVLForConditionalGeneration` (4.52 and
later), model_type `internvl`. Not the remote-code `InternVLChatModel` of OpenGVLab/InternVL3-* (family
`internvl-chat`): other module names (`model.vision_tower`, `model.multi_modal_projector`,
`model.language_model`), the installed transformers' code, and `forward`/`generate` as for any HF VLM.

The processor cuts an image into 448 px tiles plus a thumbnail; each tile gives `image_seq_length` image-context
tokens (pixel shuffle 0.5), and the whole image sits between `<img>` and `</img>`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import END_ID, IMAGE_ID, START_ID, NativeFamily, prompt, tiny_lm, tiny_vision
from diag.twins.shrink import EAGER

TINY_IMAGE, TINY_PATCH = 56, 14  # 4x4 patches -> pixel shuffle 0.5 -> 4 tokens per tile
TILES = 3  # a 2x1 grid of tiles plus the thumbnail


@register
class InternVLHfFamily(NativeFamily):
    name = "internvl-hf"
    architectures = ("InternVLForConditionalGeneration",)
    model_types = ("internvl",)
    loader = "InternVLForConditionalGeneration"
    config_class = "InternVLConfig"
    since = "4.52.0"

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        out["text_config"] = tiny_lm(out["text_config"])
        out["vision_config"] = tiny_vision(
            out["vision_config"], image_size=[TINY_IMAGE, TINY_IMAGE], patch_size=[TINY_PATCH, TINY_PATCH]
        )
        ratio = float(out.get("downsample_ratio", 0.5))
        out.update(image_token_id=IMAGE_ID, image_seq_length=int((TINY_IMAGE // TINY_PATCH) ** 2 * ratio**2))
        out.update(pad_token_id=0, **EAGER)
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        config: Any = model.config
        size = _first(config.vision_config.image_size)
        per_tile = int((size // _first(config.vision_config.patch_size)) ** 2 * float(config.downsample_ratio) ** 2)
        ids = [1, START_ID, *([int(config.image_token_id)] * (per_tile * TILES)), END_ID, 10, 11]
        return {
            "image": {
                **prompt(ids),
                "pixel_values": torch.randn(TILES, 3, size, size, generator=generator),
            }
        }

    def kit_advice(self, map_path: str) -> list[str]:
        return [
            "lmms-eval: internvl_hf loads this class with device_map='auto' in one process and "
            "cuda:{local_process_index} in several; its --model_args device_map takes a string only, so load the "
            "model in a script with this map",
            "VLMEvalKit: its InternVL classes load the remote-code checkpoints (OpenGVLab/InternVL3-*), not the -hf "
            "ports; load the -hf model in a script with this map",
        ]


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)
