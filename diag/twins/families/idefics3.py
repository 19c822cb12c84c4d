"""Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3) and SmolVLM/SmolVLM2 (HuggingFaceTB/SmolVLM2-*), the installed
transformers' `Idefics3ForConditionalGeneration` / `SmolVLMForConditionalGeneration` (4.46 / 4.50 and later).

A SigLIP tower, a pixel-shuffle connector and a Llama LM. The processor splits an image into tiles of the tower's
size plus one downscaled global tile; each tile becomes `image_seq_len` image tokens, framed by
`<fake_token_around_image>` and a position token (`<row_1_col_1>` ... `<global-img>`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import FAKE_ID, GLOBAL_ID, IMAGE_ID, NativeFamily, prompt, tiny_lm, tiny_vision
from diag.twins.shrink import EAGER

TINY_PATCH = 14
GRID_ROWS, GRID_COLS = 1, 2  # an image twice as wide as a tile: two tiles and the global one
_ROW_COL_IDS = (240, 241)  # stand-ins for the <row_1_col_1>, <row_1_col_2> text tokens
_NEWLINE_ID = 10


def _tiny(config: Mapping[str, Any]) -> Config:
    out = copy.deepcopy(dict(config))
    scale = int(out.get("scale_factor", 2))
    # Two merged tokens per side: the pixel shuffle needs a side divisible by the scale factor.
    image_size = TINY_PATCH * 2 * scale
    out["text_config"] = tiny_lm(out["text_config"])
    out["vision_config"] = tiny_vision(out["vision_config"], image_size=image_size, patch_size=TINY_PATCH)
    out.update(image_token_id=IMAGE_ID, pad_token_id=0, **EAGER)
    return out


def _image(model: nn.Module, generator: torch.Generator) -> Inputs:
    """One image split into a 1x2 grid of tiles plus the global tile, with the prompt the processor writes."""
    config: Any = model.config
    vision = config.vision_config
    size, patch, scale = int(vision.image_size), int(vision.patch_size), int(config.scale_factor)
    seq_len = (size // patch) ** 2 // scale**2
    image = [int(config.image_token_id)] * seq_len
    ids = [1]
    for col in range(GRID_COLS):
        ids += [FAKE_ID, _ROW_COL_IDS[col], *image]
    ids += [_NEWLINE_ID, _NEWLINE_ID, FAKE_ID, GLOBAL_ID, *image, FAKE_ID, 20, 21]
    tiles = GRID_ROWS * GRID_COLS + 1
    return {
        **prompt(ids),
        "pixel_values": torch.randn(1, tiles, 3, size, size, generator=generator),
        "pixel_attention_mask": torch.ones(1, tiles, size, size, dtype=torch.bool),
    }


_KIT_ADVICE = [
    "lmms-eval: its --model_args device_map takes a string only; load the model in a script with this map",
    "VLMEvalKit: pass this map to the from_pretrained call of its SmolVLM / Idefics class, or load the model in a "
    "script with it",
]


@register
class Idefics3Family(NativeFamily):
    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    model_types = ("idefics3",)
    loader = "Idefics3ForConditionalGeneration"
    config_class = "Idefics3Config"
    since = "4.46.0"

    def claims(self, config: Mapping[str, Any]) -> bool:
        # Architectures win over model_type: a SmolVLM config naming its own class is SmolVLM's.
        architectures = config.get("architectures") or ()
        names = [architectures] if isinstance(architectures, str) else list(architectures)
        if self.name == "idefics3" and "SmolVLMForConditionalGeneration" in names:
            return False
        return super().claims(config)

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        return _tiny(config)

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        return {"image": _image(model, generator)}

    def kit_advice(self, map_path: str) -> list[str]:
        return list(_KIT_ADVICE)


@register
class SmolVLMFamily(Idefics3Family):
    name = "smolvlm"
    architectures = ("SmolVLMForConditionalGeneration",)
    model_types = ("smolvlm",)
    loader = "SmolVLMForConditionalGeneration"
    config_class = "SmolVLMConfig"
    since = "4.50.0"
