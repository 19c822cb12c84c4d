"""Twins of the evaluated models: the real module tree, at full width on the meta device or tiny on the CPU.

A twin has the real model's dotted module names, layer counts, `_no_split_modules` and tied weights.
Each family (diag/twins/families, one module per family) says how its twins are built: HF-native families
(LLaVA, LLaVA-NeXT, Qwen2/2.5/3-VL, any other architecture of the installed transformers) are the installed
transformers' own classes; families that ship remote code (InternVL-Chat, CogVLM) are this package's modules
mirroring upstream's names and the steps of forward and generate that depend on devices, built on transformers'
classes where upstream builds on them.
Nothing is downloaded. A checkpoint's own remote code runs only with the user's consent (`--trust-remote-code`,
diag/twins/remote.py).
"""

from __future__ import annotations

from typing import Any

from diag.twins.build import build_meta, build_tiny, example_input_sets, example_inputs
from diag.twins.layout import LmLayout, language_model_layout, no_split_modules
from diag.twins.spec import (
    PRESETS,
    ModelSpec,
    UnknownModel,
    model_for_checkpoint,
    preset_for_checkpoint,
    resolve_model,
)

__all__ = [
    "FAMILIES",
    "PRESETS",
    "LmLayout",
    "ModelSpec",
    "UnknownModel",
    "build_meta",
    "build_tiny",
    "example_input_sets",
    "example_inputs",
    "language_model_layout",
    "model_for_checkpoint",
    "no_split_modules",
    "preset_for_checkpoint",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    """`FAMILIES`: the registered families' names, derived on first use (see diag.twins.families)."""
    if name == "FAMILIES":
        from diag.twins.families import family_names

        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
