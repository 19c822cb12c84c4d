"""Building twins: full width on the meta device for planning, tiny width on the CPU for running."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins import hf, remote
from diag.twins.cogvlm import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE, CogVLMConfig, CogVLMForCausalLM
from diag.twins.cogvlm import vision_token_count as cogvlm_vision_tokens
from diag.twins.internvl import InternVLChatConfig, InternVLChatModel
from diag.twins.shrink import IMG_END, IMG_START, TINY
from diag.twins.spec import ModelSpec


def _without_dtype(config: Any) -> Any:
    """The config without `torch_dtype`/`dtype` anywhere: transformers' `_from_config` would build sub-models in it,
    where the twin's dtype is the build's (the checkpoint's for meta, float32 for tiny)."""
    if isinstance(config, Mapping):
        return {k: _without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    return config


def _construct(family: str, config: Mapping[str, Any]) -> nn.Module:
    config = _without_dtype(config)
    if family in hf.HF_FAMILIES:
        return hf.build_hf(family, config)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
    if family == "internvl-chat":
        twin = InternVLChatModel(InternVLChatConfig(**fields))
        twin.img_context_token_id = config.get("img_context_token_id")
        return twin
    if family == "cogvlm":
        return CogVLMForCausalLM(CogVLMConfig(**fields))
    raise ValueError(f"unknown family {family!r}")


def _checkpoint_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.bfloat16


def _construct_with_default_dtype(family: str, config: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    # As from_pretrained does: parameters are made in the checkpoint's dtype, while buffers computed in float32
    # (rotary inv_freq) stay float32.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _construct(family, config)
    finally:
        torch.set_default_dtype(previous)


def build_meta(spec: ModelSpec) -> nn.Module:
    """Full width, every parameter and buffer on the meta device (no storage), in the checkpoint's dtype, eval mode."""
    if spec.code == "remote":  # the checkpoint's own code: only with --trust-remote-code (diag/twins/remote.py)
        return remote.build_meta(spec)
    with torch.device("meta"):
        model = _construct_with_default_dtype(spec.family, spec.config, _checkpoint_dtype(spec.dtype))
    return model.eval()


def build_tiny(spec: ModelSpec, *, seed: int = 0) -> nn.Module:
    """Same module names and layer counts, tiny widths, real float32 CPU weights drawn from `seed`, eval mode."""
    if spec.code == "remote":
        return remote.build_tiny(spec, seed=seed)
    config = TINY[spec.family](spec.config)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _construct_with_default_dtype(spec.family, config, torch.float32)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def example_inputs(spec: ModelSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """A valid batch for a tiny twin, on the CPU: one image and a short prompt with its image tokens."""
    if spec.code == "remote":
        return remote.example_inputs(spec, model)
    generator = torch.Generator().manual_seed(0)
    if spec.family == "llava":
        return hf.llava_inputs(model, generator)  # type: ignore[arg-type]
    if spec.family == "llava-next":
        return hf.llava_next_inputs(model, generator)  # type: ignore[arg-type]
    if spec.family == "qwen2-vl":
        return hf.qwen2_vl_inputs(model, generator)  # type: ignore[arg-type]
    if spec.family == "internvl-chat":
        return _internvl_inputs(model, generator)
    if spec.family == "cogvlm":
        return _cogvlm_inputs(model, generator)
    raise ValueError(f"unknown family {spec.family!r}")


def _internvl_inputs(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    if not isinstance(model, InternVLChatModel) or model.img_context_token_id is None:
        raise TypeError("expected a tiny InternVLChatModel twin (with img_context_token_id set)")
    size = int(model.config.force_image_size or model.config.vision_config.image_size)
    ids = [1, IMG_START, *([model.img_context_token_id] * model.num_image_token), IMG_END, 10, 11]
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(1, 3, size, size, generator=generator),
        "image_flags": torch.ones(1, 1, dtype=torch.long),
    }


def _cogvlm_inputs(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    if not isinstance(model, CogVLMForCausalLM):
        raise TypeError("expected a tiny CogVLMForCausalLM twin")
    config = model.config
    if not isinstance(config, CogVLMConfig):
        raise TypeError("expected a CogVLMConfig")
    count = cogvlm_vision_tokens(config)
    size = int(config.vision_config["image_size"])
    # Upstream build_conversation_input_ids: bos, one pad per vision token, then the text.
    ids = [1, *([0] * count), 10, 11, 12]
    types = [LANGUAGE_TOKEN_TYPE, *([VISION_TOKEN_TYPE] * count), *([LANGUAGE_TOKEN_TYPE] * 3)]
    return {
        "input_ids": torch.tensor([ids]),
        "token_type_ids": torch.tensor([types]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(1, 3, size, size, generator=generator),
    }
