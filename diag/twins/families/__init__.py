"""Model families as registered objects: one module per family, no `if family == ...` elsewhere.

A family knows how to build its models (the installed transformers' class, the checkpoint's own code, or a
hand-written twin), how to shrink a config to tiny width, which inputs the eval kits feed it (one image, several
images, a video), how the kits call it (forward + generate, or a remote-code `chat`), how its users split it over
GPUs, and what to tell the user of each kit. The rest of diag asks the registry.

Adding a family: write `diag/twins/families/<name>.py` with a subclass of `Family` decorated with `@register`,
import it in `_MODULES` below, and add tests (see docs/adding-a-family.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

Config = dict[str, Any]
Inputs = dict[str, torch.Tensor]


class Family:
    """One family of models. Subclasses set the class attributes and override what differs from the defaults."""

    name: ClassVar[str]  # the stable name recorded in the report (`data.model.family`)
    # config.json `architectures` entries and `model_type` values this family claims (architectures win).
    architectures: ClassVar[tuple[str, ...]] = ()
    model_types: ClassVar[tuple[str, ...]] = ()
    # Checkpoints ship their own modelling code (`auto_map`): from_pretrained needs trust_remote_code=True.
    remote_code: ClassVar[bool] = False
    # The transformers class a loading snippet names (`from transformers import <loader>`).
    loader: ClassVar[str] = "AutoModel"
    # A hand-written twin mirrors upstream code: the repository and revision it mirrors (None: installed classes).
    mirrors: ClassVar[str | None] = None
    # Lower runs first when several families claim a config (a generic fallback family sets a high value).
    priority: ClassVar[int] = 100
    # VLMEvalKit builds its own map for this family when AUTO_SPLIT=1 is set (InternVL's split_model).
    vlmevalkit_auto_split: ClassVar[bool] = False

    def claims(self, config: Mapping[str, Any]) -> bool:
        """True when this family builds the config (default: its architectures, then its model types)."""
        architectures = config.get("architectures") or ()
        names = [architectures] if isinstance(architectures, str) else list(architectures)
        if any(a in self.architectures for a in names):
            return True
        return str(config.get("model_type")) in self.model_types

    def checkpoint_config(self, config: Mapping[str, Any]) -> Config:
        """The config.json of a checkpoint in the form `build` takes (a repository's own format converted, as the
        LLaVA repository's); ValueError with a one-line reason when this family cannot build that checkpoint."""
        return dict(config)

    def loader_for(self, config: Mapping[str, Any]) -> str:
        """The transformers class a loading snippet names for this config (default: `loader`)."""
        return self.loader

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        """Why the installed transformers cannot build this config (one line), or None when it can."""
        return None

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """The model, in the current default device and dtype context (meta for planning, CPU for tiny twins)."""
        raise NotImplementedError

    def tiny_config(self, config: Mapping[str, Any]) -> Config:
        """Every layer count and module name kept, every width shrunk (see diag/twins/shrink.py)."""
        raise NotImplementedError

    def input_sets(self, model: nn.Module, generator: torch.Generator) -> dict[str, Inputs]:
        """Named CPU input batches for a tiny twin, as the eval kits' processors make them: "image" first, then
        any other the family takes ("images", "video"). The same-device check runs each."""
        raise NotImplementedError

    def run(self, model: nn.Module, inputs: Inputs) -> Iterator[str]:
        """Run the model as the kits call it, yielding each stage's name before running it: forward, then a
        two-token greedy generate (families driven through a `chat` method override this)."""
        yield "forward"
        model(**inputs)
        yield "generate"
        generate: Any = model.generate
        generate(**inputs, max_new_tokens=2, do_sample=False)

    def forced_map(self, meta_model: nn.Module, gpus: int) -> dict[str, Any] | None:
        """How this family's users split it over `gpus` GPUs, when that is not the installed planner (None)."""
        return None

    def kit_advice(self, map_path: str) -> list[str]:
        """What to tell the user of each kit about loading with a fixed map (besides the loading snippet)."""
        return []


_REGISTRY: dict[str, Family] = {}
# The family modules, imported once on first use (each registers its family).
_MODULES: tuple[str, ...] = (
    "llava",
    "qwen_vl",
    "internvl_chat",
    "cogvlm",
    "generic",
    "gemma3",
    "mllama",
    "llama4",
    "llava_onevision",
    "idefics3",
    "internvl_hf",
    "glm4v",
    "phi4_multimodal",
    "remote_code",
    "config_only",
)


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add one instance of the family to the registry under its name."""
    if cls.name in _REGISTRY:
        raise ValueError(f"family {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(f"diag.twins.families.{module}")


def families() -> tuple[Family, ...]:
    """Every registered family, in the order they are asked (priority, then name)."""
    _load()
    return tuple(sorted(_REGISTRY.values(), key=lambda f: (f.priority, f.name)))


def family_named(name: str) -> Family:
    """The registered family of that name (KeyError if none)."""
    _load()
    return _REGISTRY[name]


def family_for(config: Mapping[str, Any]) -> Family | None:
    """The family that builds a config.json's model, or None."""
    return next((f for f in families() if f.claims(config)), None)


def family_names() -> tuple[str, ...]:
    """The names of every registered family, in the order they are asked."""
    return tuple(f.name for f in families())


__all__ = ["Config", "Family", "Inputs", "families", "family_for", "family_named", "family_names", "register"]
