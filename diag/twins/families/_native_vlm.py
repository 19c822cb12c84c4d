"""Former home of the native-family base: its names now live in diag/twins/families/_native.py (the one base of
every family built from the installed transformers' classes). Kept so that imports from here still work; new code
imports from `_native`."""

from __future__ import annotations

from diag.twins.families._native import *  # noqa: F403 (the same objects, re-exported)
from diag.twins.families._native import __all__ as _NATIVE_NAMES
from diag.twins.families._native import prompt as ids_tensor

__all__ = [*_NATIVE_NAMES, "ids_tensor"]
