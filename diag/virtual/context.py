"""VirtualCuda: the context manager that puts the simulated node in place and takes it away again."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn

from diag.virtual.cuda_api import SimulatedCudaApi
from diag.virtual.errors import CrossDevice
from diag.virtual.labels import StorageLabels
from diag.virtual.mode import VirtualMode
from diag.virtual.modules import ModuleStack
from diag.virtual.node import SimulatedNode
from diag.virtual.ordinals import cuda_ordinals_in_accelerate

_active: VirtualCuda | None = None


class VirtualCuda:
    """`device_count` simulated GPUs on a CPU-only torch.

    Inside the context every tensor runs on the CPU and carries a virtual device: `.to("cuda:1")`,
    `device="cuda:1"` and accelerate's `dispatch_model` place tensors on virtual GPUs, `Tensor.device` reports
    them, any op that mixes devices raises torch's `Expected all tensors to be on the same device, but found
    at least two devices, cuda:0 and cuda:1!`, and `torch.cuda.*` describes the node. `model` (or `track`)
    names modules for `CrossDevice.module`; otherwise the outermost module called is taken as the model.
    """

    def __init__(
        self,
        device_count: int,
        *,
        names: Sequence[str] | None = None,
        total_memory_bytes: Sequence[int] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.node = SimulatedNode.build(device_count, names, total_memory_bytes)
        self.last_error: CrossDevice | None = None
        self._labels = StorageLabels()
        self._modules = ModuleStack()
        if model is not None:
            self._modules.track(model)
        self._mode = VirtualMode(self.node, self._labels, self._modules, self._record)
        self._exit_stack: contextlib.ExitStack | None = None

    @property
    def device_count(self) -> int:
        return self.node.device_count

    def track(self, model: nn.Module, prefix: str = "") -> None:
        """Name `model`'s modules (dotted, as in a device map) for CrossDevice.module."""
        self._modules.track(model, prefix)

    def device_of(self, tensor: torch.Tensor) -> torch.device:
        """The virtual device of `tensor` (its real device when it carries no label)."""
        with torch._C.DisableTorchFunction():
            return self._labels.device_of(tensor)

    def current_module_path(self) -> str | None:
        return self._modules.current()

    def place(self, tensor: torch.Tensor, device: object) -> bool:
        """Put a tensor nothing else shares on a device of the node without copying it: what loading a
        checkpoint tensor straight onto that device gives. False (nothing done) for a CPU or disk target, or a
        storage another placement already labelled with another device (a tied weight: it takes a copy)."""
        target = self.node.resolve(device)
        if target is None or target.type != "cuda":
            return False
        with torch._C.DisableTorchFunction():
            current = self._labels.device_of(tensor)
            if current.type == "cuda" and current != target:
                return False
            self._labels.set(tensor, target)
        return True

    def _record(self, error: CrossDevice) -> None:
        self.last_error = error

    def __enter__(self) -> VirtualCuda:
        global _active
        if _active is not None:
            raise RuntimeError("VirtualCuda contexts do not nest: one simulated node at a time")
        api = SimulatedCudaApi(self.node, self.device_of)
        with contextlib.ExitStack() as stack:
            stack.enter_context(api.patched())
            stack.enter_context(cuda_ordinals_in_accelerate())
            self._modules.install()
            stack.callback(self._modules.remove)
            stack.enter_context(self._mode)
            self._exit_stack = stack.pop_all()
        self.last_error = None
        self.node.current_index = 0
        _active = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        global _active
        _active = None
        stack, self._exit_stack = self._exit_stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self._labels.clear()


def current_module_path() -> str | None:
    """The dotted name of the innermost module whose forward is running under the active VirtualCuda."""
    return None if _active is None else _active.current_module_path()
