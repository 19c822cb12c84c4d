"""Bare ints as CUDA ordinals inside accelerate, on a torch that has no accelerator.

A device map's values are ints (`{"model.layers.3": 1}`), and accelerate turns them into devices with
`torch.device(d)` (`set_module_tensor_to_device`, `get_balanced_memory`, offload). On a GPU node that means
`cuda:d`; a CPU-only torch 2.6+ raises `Cannot access accelerator device when none is available`. The fix is
scoped to accelerate's modules: their global `torch` becomes a view of torch whose `device` reads an int as a
CUDA ordinal and is otherwise torch's own (isinstance checks included). Nesting-safe: the previous value of
each global is restored, not torch itself.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Iterator
from typing import Any

import torch

_TORCH_DEVICE = torch.device
# accelerate modules that call torch.device(...) on device-map values.
ACCELERATE_MODULES = ("accelerate.utils.modeling", "accelerate.utils.offload")


class _DeviceType(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _TORCH_DEVICE)

    def __call__(cls, *args: Any, **kwargs: Any) -> torch.device:
        if len(args) == 1 and not kwargs and isinstance(args[0], int) and not isinstance(args[0], bool):
            return _TORCH_DEVICE("cuda", args[0])
        return _TORCH_DEVICE(*args, **kwargs)


class OrdinalDevice(metaclass=_DeviceType):
    """Stands in for `torch.device`: `OrdinalDevice(1)` is `torch.device("cuda", 1)`."""


class _TorchWithCudaOrdinals(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        value = OrdinalDevice if name == "device" else getattr(torch, name)
        setattr(self, name, value)  # found without __getattr__ next time (accelerate reads torch.* per tensor)
        return value


def ints_are_cuda_ordinals() -> bool:
    """Whether this torch already reads `torch.device(0)` as an accelerator ordinal (a CUDA build does)."""
    try:
        torch.device(0)
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def cuda_ordinals_in_accelerate() -> Iterator[None]:
    if ints_are_cuda_ordinals():
        yield
        return
    proxy = _TorchWithCudaOrdinals("torch")
    saved: list[tuple[types.ModuleType, Any]] = []
    try:
        for name in ACCELERATE_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "torch"):
                saved.append((module, module.torch))
                setattr(module, "torch", proxy)  # noqa: B010
        yield
    finally:
        for module, previous in reversed(saved):
            setattr(module, "torch", previous)  # noqa: B010
