"""Shared pieces of the families whose models are the installed transformers' own classes (no remote code).

A family names its config and model classes; the installed transformers builds them, so module names, layer
counts and `_no_split_modules` are that release's. When the release lacks a class the family says so in one
line (`unavailable`) and builds nothing: the eval could not load the checkpoint on that stack either.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import transformers
from torch import nn

from diag.twins.families import Config, Family
from diag.twins.shrink import EAGER, TINY_VOCAB, tiny_text

VISION_HIDDEN, VISION_HEADS, VISION_MLP = 32, 2, 64  # as diag/twins/shrink.py shrinks vision towers
# Tiny-vocabulary ids for the multimodal placeholders (the LM's own ids are far above TINY_VOCAB).
IMAGE_ID, VIDEO_ID = 255, 254
START_ID, END_ID, VIDEO_START_ID, VIDEO_END_ID = 250, 251, 252, 253
FAKE_ID, GLOBAL_ID = 248, 249  # Idefics3/SmolVLM <fake_token_around_image>, <global-img>


def without_dtype(config: Any) -> Any:
    """The config without `torch_dtype`/`dtype` anywhere: transformers would build sub-models in it, where a
    twin's dtype is the build's (the checkpoint's for meta, float32 for tiny)."""
    if isinstance(config, Mapping):
        return {k: without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    if isinstance(config, list):
        return [without_dtype(v) for v in config]
    return config


def tiny_vision(vision: Mapping[str, Any], **fields: Any) -> Config:
    """A vision tower config at tiny width, its layer count and every other field kept."""
    out = copy.deepcopy(dict(vision))
    out.update(hidden_size=VISION_HIDDEN, intermediate_size=VISION_MLP, num_attention_heads=VISION_HEADS, **EAGER)
    out.update(fields)
    return out


def tiny_lm(text: Mapping[str, Any]) -> Config:
    """`shrink.tiny_text` plus the fields it leaves at full width in newer configs (`head_dim`, `rope_parameters`)."""
    out = tiny_text(text)
    out.pop("rope_parameters", None)
    return out


def ids_tensor(ids: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


class NativeFamily(Family):
    """A family built from the installed transformers' config and model classes."""

    config_class: ClassVar[str]
    # The transformers release that added the classes (for the one-line reason on older stacks).
    since: ClassVar[str]

    def model_class_name(self, config: Mapping[str, Any]) -> str:
        return self.loader

    def config_class_name(self, config: Mapping[str, Any]) -> str:
        return self.config_class

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        for name in (self.config_class_name(config), self.model_class_name(config)):
            if not hasattr(transformers, name):
                return (
                    f"transformers {transformers.__version__} has no {name} (added in transformers {self.since}): "
                    f"the eval could not load this checkpoint on this stack either"
                )
        return None

    def hf_config(self, config: Mapping[str, Any]) -> Any:
        """The installed transformers' config object for a config.json dict of this family."""
        config_class = getattr(transformers, self.config_class_name(config))
        return config_class.from_dict(copy.deepcopy(without_dtype(dict(config))))

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        reason = self.unavailable(config)
        if reason is not None:
            raise RuntimeError(reason)
        model_class = getattr(transformers, self.model_class_name(config))
        model: nn.Module = model_class(self.hf_config(config))
        return model


__all__ = [
    "END_ID",
    "FAKE_ID",
    "GLOBAL_ID",
    "IMAGE_ID",
    "START_ID",
    "TINY_VOCAB",
    "VIDEO_END_ID",
    "VIDEO_ID",
    "VIDEO_START_ID",
    "NativeFamily",
    "ids_tensor",
    "tiny_lm",
    "tiny_vision",
    "without_dtype",
]
