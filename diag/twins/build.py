"""Building twins: full width on the meta device for planning, tiny width on the CPU for running.

What is built, how it is shrunk and what it is fed come from the model's family (diag/twins/families).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from diag.twins import remote
from diag.twins.families import Inputs, family_named
from diag.twins.spec import ModelSpec


def _without_dtype(config: Any) -> Any:
    """The config without `torch_dtype`/`dtype` anywhere: transformers' `_from_config` would build sub-models in it,
    where the twin's dtype is the build's (the checkpoint's for meta, float32 for tiny)."""
    if isinstance(config, Mapping):
        return {k: _without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    return config


def _checkpoint_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.bfloat16


def _construct_with_default_dtype(family: str, config: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    # As from_pretrained does: parameters are made in the checkpoint's dtype, while buffers computed in float32
    # (rotary inv_freq) stay float32.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return family_named(family).build(_without_dtype(config))
    finally:
        torch.set_default_dtype(previous)


def build_meta(spec: ModelSpec) -> nn.Module:
    """Full width, every parameter and buffer on the meta device (no storage), in the checkpoint's dtype, eval mode."""
    if spec.code == "remote":  # the checkpoint's own code: only with --trust-remote-code (diag/twins/remote.py)
        return remote.build_meta(spec)
    with torch.device("meta"):
        model = _construct_with_default_dtype(spec.family, spec.config, _checkpoint_dtype(spec.dtype))
    return model.eval()


def tiny_config(spec: ModelSpec) -> dict[str, Any]:
    """The family's tiny config of the spec: every layer count and module name kept, every width shrunk."""
    return copy.deepcopy(_tiny_config(spec.family, json.dumps(dict(spec.config), sort_keys=True, default=str)))


@lru_cache(maxsize=64)
def _tiny_config(family: str, config_json: str) -> dict[str, Any]:
    # A pure function of the config, and not free (a MoE family builds a meta probe to see how it holds its
    # experts): a session runs the same twin for every map case and every fix it verifies.
    return family_named(family).tiny_config(json.loads(config_json))


def build_tiny(spec: ModelSpec, *, seed: int = 0) -> nn.Module:
    """Same module names and layer counts, tiny widths, real float32 CPU weights drawn from `seed`, eval mode."""
    if spec.code == "remote":
        return remote.build_tiny(spec, seed=seed)
    config = tiny_config(spec)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _construct_with_default_dtype(spec.family, config, torch.float32)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def example_input_sets(spec: ModelSpec, model: nn.Module) -> dict[str, Inputs]:
    """Every input batch the family feeds a tiny twin, by name ("image" first, then "video" ...), on the CPU."""
    return family_named(spec.family).input_sets(model, torch.Generator().manual_seed(0))


def example_inputs(spec: ModelSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """The first input batch of the family (one image and a short prompt with its image tokens), on the CPU."""
    return next(iter(example_input_sets(spec, model).values()))
