"""What the Gemma 3, Llama 3.2 Vision (mllama) and Llama 4 family modules share: each is built with the installed
transformers' own classes, from the config.json dict, and shrunk to tiny widths with every layer kept.

Tiny widths follow diag/twins/shrink.py: language models hidden 64 (4 heads of 16, 2 key/value heads where the
original groups them), MLP 128, a 256-token vocabulary; vision towers width 32 (2 heads). Attention is eager and
there is no end-of-sequence token, so a greedy `generate` always makes the tokens asked for.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import transformers
from torch import nn

from diag.twins.families import Config, Family

TINY_VOCAB = 256
LM_HIDDEN, LM_HEADS, LM_MLP = 64, 4, 128
VISION_HIDDEN, VISION_HEADS, VISION_MLP = 32, 2, 64
EAGER = {"attn_implementation": "eager"}


def without_dtype(config: Any) -> Any:
    """The config without `torch_dtype`/`dtype` anywhere: the twin's dtype is the build's (the default dtype
    context), where transformers would build sub-models in the config's."""
    if isinstance(config, Mapping):
        return {k: without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    return config


class InstalledFamily(Family):
    """A family whose checkpoints load with one transformers class (`config_class.from_dict`, then `loader`)."""

    config_class: ClassVar[str]
    # The transformers release that brought the classes, for the reason `unavailable` gives.
    since: ClassVar[str]

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        missing = [name for name in (self.config_class, self.loader) if getattr(transformers, name, None) is None]
        if not missing:
            return None
        return (f"transformers {transformers.__version__} has no {missing[-1]} (model_type "
                f"{config.get('model_type')!r}; it came in transformers {self.since})")  # fmt: skip

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        reason = self.unavailable(config)
        if reason is not None:
            raise ValueError(reason)
        config_object = getattr(transformers, self.config_class).from_dict(without_dtype(copy.deepcopy(dict(config))))
        model: nn.Module = getattr(transformers, self.loader)(config_object)
        return model


def tiny_text(text: Mapping[str, Any], **extra: Any) -> Config:
    """A decoder config at tiny width with its layer count, layer types and layer lists kept."""
    out = copy.deepcopy(dict(text))
    heads = int(out.get("num_attention_heads") or 1)
    grouped = int(out.get("num_key_value_heads") or heads) < heads
    out.update(
        hidden_size=LM_HIDDEN,
        intermediate_size=LM_MLP,
        num_attention_heads=LM_HEADS,
        num_key_value_heads=2 if grouped else LM_HEADS,
        head_dim=LM_HIDDEN // LM_HEADS,
        vocab_size=TINY_VOCAB,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
        **EAGER,
    )
    # Rope scaling changes values, not devices; transformers 5 keeps it as `rope_parameters`.
    for key in ("rope_scaling", "rope_parameters"):
        out.pop(key, None)
    out.update(extra)
    return out


def accepts(model: nn.Module, name: str) -> bool:
    """True when the model's forward takes that keyword (the installed transformers' signature)."""
    return name in inspect.signature(model.forward).parameters


def prompt(ids: list[int]) -> dict[str, torch.Tensor]:
    """Token ids of one sample and its attention mask."""
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


__all__ = ["EAGER", "InstalledFamily", "accepts", "prompt", "tiny_text", "without_dtype"]
