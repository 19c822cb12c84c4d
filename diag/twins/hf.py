"""Families of the installed transformers' own classes: built from a config dict, shrunk generically.

Whatever transformers is installed is what runs, so the module names are that version's: 4.45 has
`language_model.model.layers` for LLaVA and `model.layers` for Qwen2-VL; 5.x has `model.language_model.layers`
and a top-level `lm_head` for both. That difference is the point, not a defect.

`NativeFamily` is the base of every family whose checkpoints load with a transformers class (LLaVA, Qwen-VL, the
generic fallback): it names the config and model classes, says when the installed transformers lacks them, and
keeps the expert modules of a mixture-of-experts model as the real model has them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from diag.twins.families import Config, Family
from diag.twins.shrink import tiny_native

# A module per expert (`...experts.7`): the structure a per-expert ModuleList gives; fused experts have none.
_PER_EXPERT = re.compile(r"\.experts\.\d+$")


def hf_config(config_class: str, config: Mapping[str, Any]) -> PretrainedConfig:
    """The installed transformers' config object of that class for a config.json dict."""
    built: PretrainedConfig = getattr(transformers, config_class).from_dict(copy.deepcopy(dict(config)))
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


def installed(name: str) -> bool:
    """True when the installed transformers exports that class."""
    return getattr(transformers, name, None) is not None


class NativeFamily(Family):
    """A family built with the installed transformers' classes (`config_class.from_dict`, then `model_class`)."""

    config_class: ClassVar[str] = "AutoConfig"
    model_class: ClassVar[str] = "AutoModel"
    # The first transformers release with the classes (for the reason `unavailable` gives).
    since: ClassVar[str | None] = None

    def classes(self, config: Mapping[str, Any]) -> tuple[str, str]:
        """The (config class, model class) names for a config (a family of several model types overrides it)."""
        return self.config_class, self.model_class

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        missing = [name for name in self.classes(config) if not installed(name)]
        if not missing:
            return None
        since = f"; it came in transformers {self.since}" if self.since else ""
        return (f"the installed transformers {transformers.__version__} has no {missing[-1]} (model_type "
                f"{config.get('model_type')!r}){since}")  # fmt: skip

    def hf_fields(self, config: Mapping[str, Any]) -> Config:
        """The dict handed to the config class (a family whose published form differs converts it here)."""
        return copy.deepcopy(dict(config))

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        reason = self.unavailable(config)
        if reason is not None:
            raise ValueError(reason)
        config_class, model_class = self.classes(config)
        model: PreTrainedModel = getattr(transformers, model_class)(hf_config(config_class, self.hf_fields(config)))
        return model

    def shrink(self, config: Mapping[str, Any], experts: int | None) -> Config:
        """Tiny widths (see shrink.tiny_native); `experts` caps the expert count (None keeps it)."""
        return tiny_native(self.hf_fields(config), experts=experts)

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        """The generic shrink, with 4 experts only where the model fuses its experts into one module per layer:
        where it has a module per expert, the real count is kept, so the tiny tree is the real tree."""
        tiny = self.shrink(config, experts=4)
        if tiny == self.shrink(config, experts=None) or self.unavailable(config) is not None:
            return tiny
        with torch.device("meta"):
            probe = self.build(tiny)
        if any(_PER_EXPERT.search(name) for name, _ in probe.named_modules()):
            return self.shrink(config, experts=None)
        return tiny


__all__ = ["NativeFamily", "flat_qwen2_vl", "hf_config", "installed"]
