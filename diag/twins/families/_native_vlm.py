"""Former home of the native-family base: the names now live in diag/twins/families/_native.py (the one base of
every family built from the installed transformers' classes). Kept so that imports from here still work; new code
imports from `_native`."""

from __future__ import annotations

from diag.twins.families._native import (
    EAGER,
    END_ID,
    FAKE_ID,
    GLOBAL_ID,
    IMAGE_ID,
    START_ID,
    TINY_VOCAB,
    VIDEO_END_ID,
    VIDEO_ID,
    VIDEO_START_ID,
    VISION_HEADS,
    VISION_HIDDEN,
    VISION_MLP,
    NativeFamily,
    tiny_lm,
    tiny_vision,
    without_dtype,
)
from diag.twins.families._native import prompt as ids_tensor

__all__ = [
    "EAGER",
    "END_ID",
    "FAKE_ID",
    "GLOBAL_ID",
    "IMAGE_ID",
    "START_ID",
    "TINY_VOCAB",
    "VIDEO_END_ID",
    "VIDEO_ID",
    "VIDEO_START_ID",
    "VISION_HEADS",
    "VISION_HIDDEN",
    "VISION_MLP",
    "NativeFamily",
    "ids_tensor",
    "tiny_lm",
    "tiny_vision",
    "without_dtype",
]
