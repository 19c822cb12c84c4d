"""The one base of every family whose models are the installed transformers' own classes (no remote code).

A native family names its config class (`config_class`), the model class the eval loads (`loader`) and the
transformers release that brought them (`since`). The installed transformers builds them, so module names, layer
counts and `_no_split_modules` are that release's: 4.45 has `language_model.model.layers` for LLaVA and
`model.layers` for Qwen2-VL, 5.x has `model.language_model.layers` and a top-level `lm_head` for both. That
difference is the point, not a defect. When the release lacks a class the family says so in one line
(`unavailable`) and builds nothing: the eval could not load the checkpoint on that stack either.

A family overrides only what differs: `hf_fields` (a published form the config class does not read as it is),
`tiny_config` (the default is the generic shrink, diag/twins/shrink.tiny_native), `input_sets`, `forced_map`,
`kit_advice`. The helpers below shrink a language model or a vision tower the same way for every family: hidden 64
(4 heads of 16, 2 key/value heads where the original groups them), MLP 128, a 256-token vocabulary; towers width 32
(2 heads), MLP 64. Attention is eager and there is no end-of-sequence token, so a greedy `generate` always makes
the tokens asked for.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import transformers
from torch import nn

from diag.twins.families import Config, Family
from diag.twins.shrink import (
    EAGER,
    LM_HEADS,
    LM_HIDDEN,
    TINY_VOCAB,
    VISION_HEADS,
    VISION_HIDDEN,
    VISION_MLP,
    tiny_native,
    tiny_text,
)

# Tiny-vocabulary ids for the multimodal placeholders (the LM's own ids are far above TINY_VOCAB).
IMAGE_ID, VIDEO_ID = 255, 254
START_ID, END_ID, VIDEO_START_ID, VIDEO_END_ID = 250, 251, 252, 253
FAKE_ID, GLOBAL_ID = 248, 249  # Idefics3/SmolVLM <fake_token_around_image>, <global-img>
TINY_HEAD_DIM = LM_HIDDEN // LM_HEADS

# A module per expert (`...experts.7`): the structure a per-expert ModuleList gives; fused experts have none.
_PER_EXPERT = re.compile(r"\.experts\.\d+$")


def installed(name: str) -> bool:
    """True when the installed transformers exports that class."""
    return getattr(transformers, name, None) is not None


def without_dtype(config: Any) -> Any:
    """The config without `torch_dtype`/`dtype` anywhere: transformers would build sub-models in it, where a
    twin's dtype is the build's (the checkpoint's for meta, float32 for tiny)."""
    if isinstance(config, Mapping):
        return {k: without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    if isinstance(config, list):
        return [without_dtype(v) for v in config]
    return config


def tiny_lm(text: Mapping[str, Any], **fields: Any) -> Config:
    """A decoder config at tiny width (`shrink.tiny_text`) with its layer count, layer types and layer lists kept,
    and without `rope_parameters` (transformers 5's name for the rope scaling, which changes values, not
    devices); `fields` set more (a family whose text config defaults `head_dim` to another width passes
    `head_dim=TINY_HEAD_DIM`)."""
    out = tiny_text(text)
    out.pop("rope_parameters", None)
    out.update(fields)
    return out


def tiny_vision(vision: Mapping[str, Any], *, heads_field: str = "num_attention_heads", **fields: Any) -> Config:
    """A vision tower config at tiny width, its layer count and every other field kept; `heads_field` is the
    config's name for the head count (`attention_heads` in Mllama, `num_heads` in GLM-4.1V)."""
    out = copy.deepcopy(dict(vision))
    out.update(hidden_size=VISION_HIDDEN, intermediate_size=VISION_MLP, **EAGER)
    out[heads_field] = VISION_HEADS
    out.update(fields)
    return out


def prompt(ids: list[int]) -> dict[str, torch.Tensor]:
    """Token ids of one sample and its attention mask."""
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


def accepts(model: nn.Module, name: str) -> bool:
    """True when the model's forward takes that keyword (the installed transformers' signature)."""
    return name in inspect.signature(model.forward).parameters


class NativeFamily(Family):
    """A family built from the installed transformers' config class and model class."""

    config_class: ClassVar[str] = "AutoConfig"
    # The first transformers release with the classes (for the one-line reason `unavailable` gives on older ones).
    since: ClassVar[str | None] = None

    def config_class_name(self, config: Mapping[str, Any]) -> str:
        """The transformers config class for a config.json (a family of several model types overrides it)."""
        return self.config_class

    def model_class_name(self, config: Mapping[str, Any]) -> str:
        """The transformers model class for a config.json: the class the eval loads (`loader_for`)."""
        return self.loader_for(config)

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        missing = [n for n in (self.config_class_name(config), self.model_class_name(config)) if not installed(n)]
        if not missing:
            return None
        since = f"; added in transformers {self.since}" if self.since else ""
        return (f"the installed transformers {transformers.__version__} has no {', '.join(missing)} (model_type "
                f"{config.get('model_type')!r}{since})")  # fmt: skip

    def hf_fields(self, config: Mapping[str, Any]) -> Config:
        """The dict handed to the config class (a family whose published form differs converts it here)."""
        return copy.deepcopy(dict(config))

    def hf_config(self, config: Mapping[str, Any]) -> Any:
        """The installed transformers' config object for a config.json dict of this family."""
        config_class = getattr(transformers, self.config_class_name(config))
        return config_class.from_dict(without_dtype(self.hf_fields(config)))

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        reason = self.unavailable(config)
        if reason is not None:
            raise ValueError(reason)
        model: nn.Module = getattr(transformers, self.model_class_name(config))(self.hf_config(config))
        return model

    def has_per_expert_modules(self, config: Mapping[str, Any]) -> bool:
        """True when the model of that (tiny) config has a module per expert (`...experts.7`): the expert count is
        then part of the module tree, and a tiny twin must keep it. Built on the meta device."""
        with torch.device("meta"):
            probe = self.build(config)
        return any(_PER_EXPERT.search(name) for name, _ in probe.named_modules())

    def shrink(self, config: Mapping[str, Any], experts: int | None) -> Config:
        """Tiny widths (see shrink.tiny_native); `experts` caps the expert count (None keeps it)."""
        return tiny_native(self.hf_fields(config), experts=experts)

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        """The generic shrink, with 4 experts only where the model fuses its experts into one module per layer:
        where it has a module per expert, the real count is kept, so the tiny tree is the real tree."""
        tiny = self.shrink(config, experts=4)
        if tiny == self.shrink(config, experts=None) or self.unavailable(config) is not None:
            return tiny
        if self.has_per_expert_modules(tiny):
            return self.shrink(config, experts=None)
        return tiny


__all__ = [
    "EAGER",
    "END_ID",
    "FAKE_ID",
    "GLOBAL_ID",
    "IMAGE_ID",
    "LM_HEADS",
    "LM_HIDDEN",
    "START_ID",
    "TINY_HEAD_DIM",
    "TINY_VOCAB",
    "VIDEO_END_ID",
    "VIDEO_ID",
    "VIDEO_START_ID",
    "VISION_HEADS",
    "VISION_HIDDEN",
    "VISION_MLP",
    "NativeFamily",
    "accepts",
    "installed",
    "prompt",
    "tiny_lm",
    "tiny_vision",
    "without_dtype",
]
