"""Any architecture the installed transformers has, with no family of its own: the lowest-priority fallback.

It claims a config.json whose first `architectures` entry is a class of the installed transformers and builds
it with that class and the config class of its `model_type`. The tiny shrink is the generic one (shrink.
tiny_native: text_config / vision_config / flat language-model fields, MoE experts, M-RoPE sections, tie settings
kept). Inputs: one image where the model says how many image tokens it makes (its `get_image_features` on one
image at the tiny tower's size, and a CPU forward with that prompt passes), else a text prompt only.

Not exercised by this family: several images, video, image-size-dependent tilings (anyres, aspect-ratio tiles,
cross-attention image inputs), and any kit-specific call path; a family of its own covers those.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from torch import nn

from diag.twins.families import Inputs, register
from diag.twins.families._native import NativeFamily, installed, without_dtype

_TEXT_IDS = [1, 10, 11, 12]
# get_image_features parameters the generic family can fill from the config.
_FROM_CONFIG = ("vision_feature_layer", "vision_feature_select_strategy")


def _architecture(config: Mapping[str, Any]) -> str | None:
    architectures = config.get("architectures") or ()
    names = [architectures] if isinstance(architectures, str) else list(architectures)
    return names[0] if names and isinstance(names[0], str) else None


def _config_class(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        return None


@register
class Generic(NativeFamily):
    name = "generic"
    priority = 1000

    def claims(self, config: Mapping[str, Any]) -> bool:
        arch = _architecture(config)
        return arch is not None and installed(arch) and _config_class(str(config.get("model_type"))) is not None

    def loader_for(self, config: Mapping[str, Any]) -> str:
        return _architecture(config) or self.loader

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        arch = _architecture(config)
        if arch is None or not installed(arch):
            return f"the installed transformers {transformers.__version__} has no {arch or 'architecture'} class"
        if _config_class(str(config.get("model_type"))) is None:
            return (f"the installed transformers {transformers.__version__} does not know model_type "
                    f"{config.get('model_type')!r}")  # fmt: skip
        return None

    def hf_config(self, config: Mapping[str, Any]) -> Any:
        # The config class of the model_type (not every one is exported at transformers' top level).
        return _config_class(str(config["model_type"])).from_dict(without_dtype(self.hf_fields(config)))

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        image = _image_inputs(model, generator)
        if image is not None:
            return {"image": image}
        return {"text": {"input_ids": torch.tensor([_TEXT_IDS]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}}


def _image_inputs(model: nn.Module, generator: torch.Generator) -> Inputs | None:
    """One image and a prompt with as many image tokens as the model makes features for it; None when the
    config does not say enough (no image token, no fixed tower size) or the model does not run with them."""
    config: Any = model.config
    vision = getattr(config, "vision_config", None)
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    size = getattr(vision, "image_size", None)
    if vision is None or not isinstance(token, int) or not isinstance(size, int):
        return None
    channels = int(getattr(vision, "num_channels", 3) or 3)
    pixels = torch.randn(1, channels, size, size, generator=generator)
    try:
        with torch.no_grad():
            counted = _count_image_tokens(model, pixels)
            if counted is None:
                return None
            count, extra = counted
            ids = [1, *([token] * count), 10, 11, 12]
            mask = torch.ones(1, len(ids), dtype=torch.long)
            inputs: Inputs = {"input_ids": torch.tensor([ids]), "attention_mask": mask, "pixel_values": pixels, **extra}
            model(**inputs)
    except Exception:
        return None
    return inputs


def _count_image_tokens(model: nn.Module, pixels: torch.Tensor) -> tuple[int, Inputs] | None:
    """How many image tokens the model makes of one image, and any extra input it needs for it (image_sizes):
    from its `get_image_features` where it has one, else LLaVA's rule (one per patch, plus the CLS feature with
    the "full" strategy) where the config names a feature strategy; None otherwise."""
    config: Any = model.config
    size = int(pixels.shape[-1])
    features = getattr(model, "get_image_features", None)
    if features is None:
        strategy = getattr(config, "vision_feature_select_strategy", None)
        patch = getattr(config.vision_config, "patch_size", None)
        if strategy not in ("default", "full") or not isinstance(patch, int):
            return None
        return (size // patch) ** 2 + (1 if strategy == "full" else 0), {}
    kwargs: dict[str, Any] = {}
    extra: Inputs = {}
    for name, param in inspect.signature(features).parameters.items():
        if name in _FROM_CONFIG and hasattr(config, name):
            kwargs[name] = getattr(config, name)
        elif name == "image_sizes" and param.default is inspect.Parameter.empty:
            kwargs[name] = extra[name] = torch.tensor([[size, size]])
        elif name != "pixel_values" and param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        ):  # fmt: skip
            return None
    return _rows(features(pixel_values=pixels, **kwargs)), extra


def _rows(output: Any) -> int:
    """Feature rows (image tokens) in what get_image_features returns: a tensor, a list of them, or a model
    output whose `pooler_output` holds them (transformers 5)."""
    if not isinstance(output, torch.Tensor | list | tuple):
        output = getattr(output, "pooler_output", None)
        if output is None:
            raise TypeError("no image features")
    tensors = [output] if isinstance(output, torch.Tensor) else list(output)
    return sum(int(t.reshape(-1, t.shape[-1]).shape[0]) for t in tensors)
