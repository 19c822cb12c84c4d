"""HF-native families (LLaVA, LLaVA-NeXT, Qwen2-VL): the installed transformers' classes, built from a config dict.

Whatever transformers is installed is what runs, so the module names are that version's: 4.45 has
`language_model.model.layers` for LLaVA and `model.layers` for Qwen2-VL; 5.x has `model.language_model.layers`
and a top-level `lm_head` for both. That difference is the point, not a defect.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

_CLASSES = {
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration"),
    "llava-next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration"),
    "qwen2-vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
}
HF_FAMILIES = tuple(_CLASSES)


def hf_config(family: str, config: Mapping[str, Any]) -> PretrainedConfig:
    """The installed transformers' config object for a config.json dict of an HF-native family."""
    config_class = getattr(transformers, _CLASSES[family][0])
    fields = flat_qwen2_vl(config) if family == "qwen2-vl" else copy.deepcopy(dict(config))
    built: PretrainedConfig = config_class.from_dict(fields)
    return built


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


def build_hf(family: str, config: Mapping[str, Any]) -> PreTrainedModel:
    """The model class of the family, built in the current default device context."""
    model_class = getattr(transformers, _CLASSES[family][1])
    model: PreTrainedModel = model_class(hf_config(family, config))
    return model


def _image_size(model: PreTrainedModel) -> tuple[int, int]:
    vision = model.config.vision_config
    return int(vision.image_size), int(vision.patch_size)


def llava_inputs(model: PreTrainedModel, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One image and a prompt with one `<image>` token per patch feature, as the processor expands it."""
    image_size, patch_size = _image_size(model)
    per_side = image_size // patch_size
    count = per_side**2 + (1 if model.config.vision_feature_select_strategy == "full" else 0)
    image_token = int(model.config.image_token_index)
    ids = [1, *([image_token] * count), 10, 11, 12]
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(1, 3, image_size, image_size, generator=generator),
    }


def llava_next_inputs(model: PreTrainedModel, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One image exactly the size of the first anyres pinpoint, so no unpadding changes the token count:
    the base patch's features, then each row of the high-resolution grid plus its `image_newline`."""
    image_size, patch_size = _image_size(model)
    per_side = image_size // patch_size
    height, width = (int(v) for v in model.config.image_grid_pinpoints[0])
    grid_rows, grid_cols = height // image_size, width // image_size
    base = per_side**2 + (1 if model.config.vision_feature_select_strategy == "full" else 0)
    count = base + (per_side * grid_rows) * (per_side * grid_cols + 1)
    image_token = int(model.config.image_token_index)
    ids = [1, *([image_token] * count), 10, 11, 12]
    patches = 1 + grid_rows * grid_cols
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(1, patches, 3, image_size, image_size, generator=generator),
        "image_sizes": torch.tensor([[height, width]]),
    }


def qwen2_vl_inputs(model: PreTrainedModel, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One 4x4-patch image: flattened patches, its grid, and `<|vision_start|>` + one pad per merged patch."""
    config = model.config
    vision = config.vision_config
    grid_t, grid_h, grid_w = 1, 4, 4
    merge = int(vision.spatial_merge_size)
    count = grid_t * grid_h * grid_w // (merge * merge)
    patch_dim = int(vision.in_chans) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
    ids = [1, int(config.vision_start_token_id), *([int(config.image_token_id)] * count)]
    ids += [int(config.vision_end_token_id), 10, 11]
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(grid_t * grid_h * grid_w, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
    }
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        # transformers 5 wants the processor's token types (1 = image) to place M-RoPE positions.
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == int(config.image_token_id)).int()
    return inputs
