"""InternVL-Chat (InternVL2 remote code, `InternVLChatModel`): diag's hand-written twin (diag/twins/internvl.py).

The kits drive it through `chat` only (VLMEvalKit and lmms-eval): the prompt tokenised by a stand-in tokenizer,
the ids sent with `.cuda()`, the image where the kit put it, then a two-token greedy generate. Its users split it
with InternVL's own `split_model` (the README's, and VLMEvalKit's AUTO_SPLIT=1). Inputs: one 448-px tile (shrunk);
not exercised: several tiles (dynamic resolution), several images, video frames.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Family, Inputs, register
from diag.twins.internvl import InternVLChatConfig, InternVLChatModel, TwinTokenizer
from diag.twins.shrink import IMAGE_TOKEN, IMG_END, IMG_START, VISION_HEADS, VISION_HIDDEN, VISION_MLP, tiny_text


@register
class InternVLChat(Family):
    name = "internvl-chat"
    architectures = ("InternVLChatModel",)
    model_types = ("internvl_chat",)
    remote_code = True
    loader = "AutoModel"
    mirrors = "OpenGVLab/InternVL@0dc48a2 (internvl_chat/internvl/model/internvl_chat)"
    vlmevalkit_auto_split = True

    def checkpoint_config(self, config: Mapping[str, Any]) -> Config:
        from diag.twins.spec import INTERNVL_LANGUAGE_MODELS

        llm = config.get("llm_config") or {}
        arch = (llm.get("architectures") or ["InternLM2ForCausalLM"])[0]
        if arch not in INTERNVL_LANGUAGE_MODELS:
            raise ValueError(f"InternVL with a {arch} language model is not supported "
                             f"(supported: {', '.join(INTERNVL_LANGUAGE_MODELS)})")  # fmt: skip
        return dict(config)

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        """The language model's class missing from the installed transformers (Qwen3 before 4.51, InternVL3.5)."""
        import transformers

        llm = config.get("llm_config") or {}
        arch = str((llm.get("architectures") or ["InternLM2ForCausalLM"])[0])
        if arch == "InternLM2ForCausalLM" or hasattr(transformers, arch):
            return None
        return (f"the installed transformers {transformers.__version__} has no {arch}, the language model of this "
                "InternVL (its remote code imports it from transformers)")  # fmt: skip

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
        twin = InternVLChatModel(InternVLChatConfig(**fields))
        twin.img_context_token_id = config.get("img_context_token_id")
        return twin

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        out["llm_config"] = tiny_text(out["llm_config"])
        vision = copy.deepcopy(dict(out["vision_config"]))
        vision.update(hidden_size=VISION_HIDDEN, intermediate_size=VISION_MLP, num_attention_heads=VISION_HEADS,
                      image_size=56)  # fmt: skip
        out["vision_config"] = vision
        out["force_image_size"] = 56  # 4x4 patches -> pixel shuffle 0.5 -> 4 image tokens
        out["img_context_token_id"] = IMAGE_TOKEN
        return out

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        config: Any = getattr(model, "config", None)
        size = int(config.force_image_size or config.vision_config.image_size)
        token, count = getattr(model, "img_context_token_id", None), getattr(model, "num_image_token", None)
        if not isinstance(model, InternVLChatModel) or token is None or count is None:
            # The checkpoint's own code (--trust-remote-code): `chat` tokenises the prompt itself; it takes the image.
            return {"image": {"pixel_values": torch.randn(1, 3, size, size, generator=generator)}}
        ids = [1, IMG_START, *([token] * int(count)), IMG_END, 10, 11]
        return {"image": {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, size, size, generator=generator),
            "image_flags": torch.ones(1, 1, dtype=torch.long),
        }}  # fmt: skip

    def run(self, model: nn.Module, inputs: Inputs) -> Iterator[str]:
        yield "chat"
        chat: Any = getattr(model, "chat")  # noqa: B009 (the twin's remote-code method)
        chat(TwinTokenizer(), inputs["pixel_values"], "Describe the image.", {"max_new_tokens": 2, "do_sample": False})

    def forced_map(self, meta_model: nn.Module, gpus: int) -> dict[str, Any] | None:
        """InternVL's own split_model layout (the README's, rotary_emb included)."""
        from diag.devicemap.autosplit import PINNED_MODULES, internvl_split
        from diag.twins.layout import language_model_layout

        layout = language_model_layout(meta_model)
        names = {name for name, _ in meta_model.named_modules()}
        split = internvl_split(num_layers=layout.num_layers, layers=layout.layers,
                               pinned=[p for p in PINNED_MODULES if p in names], visible_gpus=gpus)  # fmt: skip
        return {k: v for k, v in split.device_map.items() if k in names}

    def kit_advice(self, map_path: str) -> list[str]:
        return ["VLMEvalKit: return this map from split_model() in vlmeval/vlm/internvl/utils.py (InternVL's own "
                "split), or load the model in a script as above"]  # fmt: skip
