"""Where the language model's parts are in a built twin, and which classes must not be split.

Names are read from the built model (`named_modules`), never from a table, so they are the installed
transformers' names: `language_model.model.layers` on 4.45 LLaVA, `model.language_model.layers` on 5.x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from torch import nn
from transformers import PreTrainedModel

from diag.twins.build import build_meta
from diag.twins.spec import ModelSpec

# Last name components of the vision towers and projectors across the families.
_VISION_NAMES = ("vision_model", "mlp1", "vision_tower", "multi_modal_projector", "visual", "vision")


@dataclass(frozen=True)
class LmLayout:
    """Dotted module names of the language model's parts (and the vision side) in one built model."""

    num_layers: int
    layers: str
    embed: str
    norm: str
    head: str
    rotary: str | None
    vision: tuple[str, ...]


def no_split_modules(model: nn.Module) -> list[str]:
    """The class names that must not be split, as the installed transformers computes them for `device_map="auto"`:
    `_get_no_split_modules("auto")` up to 4.x, the `_no_split_modules` set that `post_init` gathers from 5.0."""
    if isinstance(model, PreTrainedModel):
        getter = getattr(model, "_get_no_split_modules", None)
        if callable(getter):
            return sorted(getter("auto"))
    return sorted(getattr(model, "_no_split_modules", None) or [])


def language_model_layout(spec_or_model: ModelSpec | nn.Module) -> LmLayout:
    """The layout of a built model, or of the full-width meta twin of a spec."""
    if isinstance(spec_or_model, ModelSpec):
        spec = spec_or_model
        return _layout_of_spec(spec.name, spec.family, json.dumps(dict(spec.config), sort_keys=True), spec.dtype)
    return _layout(spec_or_model)


@lru_cache(maxsize=32)
def _layout_of_spec(name: str, family: str, config_json: str, dtype: str) -> LmLayout:
    return _layout(build_meta(ModelSpec(name, family, json.loads(config_json), (), dtype)))


def _layout(model: nn.Module) -> LmLayout:
    modules = dict(model.named_modules())
    name_of = {id(module): name for name, module in modules.items()}
    embed = name_of[id(model.get_input_embeddings())]  # type: ignore[operator]
    head = name_of[id(model.get_output_embeddings())]  # type: ignore[operator]
    parent = embed.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    layers = f"{prefix}layers"
    if not isinstance(modules.get(layers), nn.ModuleList):
        raise ValueError(f"no decoder layers next to {embed}")
    rotary = f"{prefix}rotary_emb" if f"{prefix}rotary_emb" in modules else None
    vision: list[str] = []
    for name in modules:
        if name.rpartition(".")[2] in _VISION_NAMES and not any(name.startswith(v + ".") for v in vision):
            vision.append(name)
    return LmLayout(
        num_layers=len(modules[layers]),
        layers=layers,
        embed=embed,
        norm=f"{prefix}norm",
        head=head,
        rotary=rotary,
        vision=tuple(vision),
    )
