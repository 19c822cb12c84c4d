"""Two families no config.json is claimed by: diag/twins/spec.py gives them to configs no other family builds.

- "remote": the checkpoint ships its own modelling code (`auto_map`) and diag has no twin of it. Only that code
  builds it, and only with the user's consent (`--trust-remote-code`, diag/twins/remote.py); the shrink and inputs
  here are generic (the usual width fields; one image with a LLaVA-style token run).
- "unknown": a `model_type` the installed transformers does not know and no `auto_map`. Nothing builds it; the
  model check fails MODEL-002, as the eval's from_pretrained would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diag.twins.families import Config, Family, Inputs, register


@register
class RemoteOnly(Family):
    name = "remote"
    remote_code = True
    loader = "AutoModelForCausalLM"
    priority = 10_000

    def claims(self, config: Mapping[str, Any]) -> bool:
        return False  # given by spec resolution to auto_map configs no other family claims

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        raise ValueError("only the checkpoint's own code builds this model (--trust-remote-code)")

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        from diag.twins.remote import tiny_config

        return tiny_config(config)

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        from diag.twins.remote import example_inputs

        return {"image": example_inputs(None, model)}


@register
class UnknownType(Family):
    name = "unknown"
    priority = 10_001

    def claims(self, config: Mapping[str, Any]) -> bool:
        return False  # given by spec resolution to a model_type the installed transformers does not know

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        import transformers

        return (f"the installed transformers {transformers.__version__} has no model_type "
                f"{config.get('model_type')!r}")  # fmt: skip

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        raise ValueError(self.unavailable(config))
