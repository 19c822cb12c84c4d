"""CogVLM (THUDM/cogvlm-chat-hf remote code, `CogVLMForCausalLM`): diag's hand-written twin (diag/twins/cogvlm.py).

Inputs as upstream `build_conversation_input_ids` makes them: bos, one pad per vision token (token type vision),
then the text. Not exercised: grounding prompts, several images (CogVLM takes one per conversation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.cogvlm import (
    LANGUAGE_TOKEN_TYPE,
    VISION_TOKEN_TYPE,
    CogVLMConfig,
    CogVLMForCausalLM,
    vision_token_count,
)
from diag.twins.families import Config, Family, Inputs, register
from diag.twins.shrink import VISION_HEADS, VISION_HIDDEN, VISION_MLP, tiny_text


@register
class CogVLM(Family):
    name = "cogvlm"
    architectures = ("CogVLMForCausalLM",)
    model_types = ("cogvlm",)
    remote_code = True
    loader = "AutoModelForCausalLM"
    mirrors = "THUDM/cogvlm-chat-hf (modeling_cogvlm.py, visual.py)"

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return CogVLMForCausalLM(
            CogVLMConfig(**{k: v for k, v in config.items() if k not in ("model_type", "auto_map")})
        )

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = tiny_text(config)
        vision = copy.deepcopy(dict(out["vision_config"]))
        vision.update(hidden_size=VISION_HIDDEN, intermediate_size=VISION_MLP, num_heads=VISION_HEADS, image_size=28,
                      patch_size=14, num_positions=(28 // 14) ** 2 + 1)  # fmt: skip
        out["vision_config"] = vision
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        config = getattr(model, "config", None)
        if not isinstance(model, CogVLMForCausalLM) or not isinstance(config, CogVLMConfig):
            raise TypeError("expected a tiny CogVLMForCausalLM twin")
        count = vision_token_count(config)
        size = int(config.vision_config["image_size"])
        ids = [1, *([0] * count), 10, 11, 12]
        types = [LANGUAGE_TOKEN_TYPE, *([VISION_TOKEN_TYPE] * count), *([LANGUAGE_TOKEN_TYPE] * 3)]
        return {"image": {
            "input_ids": torch.tensor([ids]),
            "token_type_ids": torch.tensor([types]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, size, size, generator=generator),
        }}  # fmt: skip

    def kit_advice(self, map_path: str) -> list[str]:
        return ["VLMEvalKit: load CogVLM with this map in vlmeval/vlm/cogvlm.py (its from_pretrained call), or plan "
                "with no_split_module_classes=['CogVLMDecoderLayer', 'TransformerLayer'] so each vision "
                "TransformerLayer stays whole"]  # fmt: skip
