"""LLaVA-1.5 and LLaVA-NeXT: transformers' `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration`.

Checkpoints in the LLaVA repository's own format (liuhaotian/*, lmms-lab/llava-next-*: a flat language-model
config plus `mm_*` fields) are converted to the HF form first, so the twin has transformers' module names.
Inputs: one image (LLaVA-NeXT: exactly the size of the first anyres pinpoint, so no unpadding changes the token
count) and a short prompt. Not exercised: several images in one prompt, other anyres shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Inputs, register
from diag.twins.families._native import NativeFamily
from diag.twins.shrink import EAGER, IMAGE_TOKEN, tiny_clip, tiny_text

# The LLaVA repository's own format: its architectures and the transformers language model each stands for.
_LLAVA_REPO_LM = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwenForCausalLM": "qwen2",
}


def _image_size(model: nn.Module) -> tuple[int, int]:
    config: Any = model.config
    vision = config.vision_config
    return int(vision.image_size), int(vision.patch_size)


class _LlavaBase(NativeFamily):
    priority = 50  # before any family claiming the same model type by architecture class alone

    def claims(self, config: Mapping[str, Any]) -> bool:
        if "mm_vision_tower" in config:  # the LLaVA repository's format: converted by the llava family
            return self.name == "llava"
        return super().claims(config)

    def checkpoint_config(self, config: Mapping[str, Any]) -> Config:
        if "mm_vision_tower" in config:
            return from_llava_repo(config)
        return dict(config)

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        out = copy.deepcopy(dict(config))
        full_image = int(out["vision_config"].get("image_size", 336))
        out["text_config"] = tiny_text(out["text_config"])
        out["vision_config"] = tiny_clip(out["vision_config"])
        tiny_image = int(out["vision_config"]["image_size"])
        out.update(image_token_index=IMAGE_TOKEN, image_seq_length=(tiny_image // 14) ** 2, pad_token_id=0, **EAGER)
        if "image_grid_pinpoints" in out:
            out["image_grid_pinpoints"] = [
                [h * tiny_image // full_image, w * tiny_image // full_image] for h, w in out["image_grid_pinpoints"]
            ]
        return out


@register
class Llava(_LlavaBase):
    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    model_types = ("llava",)
    loader = "LlavaForConditionalGeneration"
    config_class = "LlavaConfig"

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """One image and a prompt with one `<image>` token per patch feature, as the processor expands it."""
        config: Any = model.config
        image_size, patch_size = _image_size(model)
        count = (image_size // patch_size) ** 2 + (1 if config.vision_feature_select_strategy == "full" else 0)
        ids = [1, *([int(config.image_token_index)] * count), 10, 11, 12]
        return {"image": {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, image_size, image_size, generator=generator),
        }}  # fmt: skip


@register
class LlavaNext(_LlavaBase):
    name = "llava-next"
    architectures = ("LlavaNextForConditionalGeneration",)
    model_types = ("llava_next",)
    loader = "LlavaNextForConditionalGeneration"
    config_class = "LlavaNextConfig"
    since = "4.39"

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """The base patch's features, then each row of the high-resolution grid plus its `image_newline`."""
        config: Any = model.config
        image_size, patch_size = _image_size(model)
        per_side = image_size // patch_size
        height, width = (int(v) for v in config.image_grid_pinpoints[0])
        grid_rows, grid_cols = height // image_size, width // image_size
        base = per_side**2 + (1 if config.vision_feature_select_strategy == "full" else 0)
        count = base + (per_side * grid_rows) * (per_side * grid_cols + 1)
        ids = [1, *([int(config.image_token_index)] * count), 10, 11, 12]
        patches = 1 + grid_rows * grid_cols
        return {"image": {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(1, patches, 3, image_size, image_size, generator=generator),
            "image_sizes": torch.tensor([[height, width]]),
        }}  # fmt: skip


def from_llava_repo(config: Mapping[str, Any]) -> Config:
    """The HF-format equivalent of a LLaVA-repository config (LlavaLlamaForCausalLM & co.).

    Its language model is the flat config; its tower is CLIP ViT-L/14 (336 or 224 px, as `mm_vision_tower`
    names it) and its `mlp2x_gelu` projector is HF's `multi_modal_projector`. Image positions are marked with
    -200 outside the vocabulary there; the twin marks them with the last vocabulary id. Module names are
    transformers' (LlavaForConditionalGeneration), not the LLaVA repository's (`model.mm_projector`).
    ValueError for another language model or tower.
    """
    from diag.twins.presets import PRESET_TABLE

    arch = (config.get("architectures") or [""])[0]
    tower = str(config.get("mm_vision_tower", ""))
    lm_type = _LLAVA_REPO_LM.get(arch)
    if lm_type is None or "clip-vit-large-patch14" not in tower:
        raise ValueError(
            f"LLaVA-repository config with {arch or 'no architecture'} and tower {tower!r} is not supported "
            "(LLaVA with Llama/Mistral/Qwen2 and CLIP ViT-L/14)"
        )
    vision = copy.deepcopy(PRESET_TABLE["llava-1.5-7b"][1]["vision_config"])
    if not tower.endswith("336"):
        vision["image_size"] = 224
    text = {k: v for k, v in config.items() if not k.startswith(("mm_", "image_")) and k != "architectures"}
    text.update(model_type=lm_type, architectures=[arch.replace("Llava", "", 1)])
    vocab = int(text.get("vocab_size", 32000))
    anyres = "anyres" in str(config.get("image_aspect_ratio", ""))
    out: dict[str, Any] = {
        "model_type": "llava_next" if anyres else "llava",
        "architectures": ["LlavaNextForConditionalGeneration" if anyres else "LlavaForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": vocab - 1,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": int(config.get("mm_vision_select_layer", -2)),
        "vision_feature_select_strategy": "full"
        if config.get("mm_vision_select_feature") == "cls_patch"
        else "default",
        "torch_dtype": config.get("torch_dtype"),
    }
    if anyres:
        out["image_grid_pinpoints"] = (
            config.get("image_grid_pinpoints") or PRESET_TABLE["llava-v1.6-34b"][1]["image_grid_pinpoints"]
        )
    return out
