"""`torch.cuda.*` (and `torch.accelerator.*`) answered from the simulated node while the context is active.

Only module attributes are replaced, for the life of the context: code that looks them up at call time (torch's
own autocast, accelerate, transformers) sees the node; nothing else about torch changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from diag.virtual.node import INVALID_DEVICE_ID_MESSAGE, SimulatedNode, capability_of


@dataclass(frozen=True)
class VirtualDeviceProperties:
    """What `torch.cuda.get_device_properties` returns for a simulated GPU (fields as in _CudaDeviceProperties)."""

    name: str
    total_memory: int
    major: int
    minor: int
    multi_processor_count: int = 108
    is_integrated: int = 0
    is_multi_gpu_board: int = 0


class VirtualStream:
    """A CUDA stream that orders nothing: every op already ran, on the CPU, by the time it is asked."""

    def __init__(self, device: object = None, priority: int = 0, **_: Any) -> None:
        self.device = device
        self.priority = priority
        self.cuda_stream = 0

    def wait_stream(self, stream: object) -> None:
        return None

    def wait_event(self, event: object) -> None:
        return None

    def record_event(self, event: VirtualEvent | None = None) -> VirtualEvent:
        event = event if event is not None else VirtualEvent()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


class VirtualEvent:
    """A CUDA event whose timings are all zero."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing

    def record(self, stream: object = None) -> None:
        return None

    def wait(self, stream: object = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, end_event: object) -> float:
        return 0.0


class _StreamContext:
    def __init__(self, stream: object) -> None:
        self.stream = stream

    def __enter__(self) -> object:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        return None


class SimulatedCudaApi:
    """The replacement functions, bound to one node. `device_of` gives a tensor's virtual device."""

    def __init__(self, node: SimulatedNode, virtual_device_of: Callable[[torch.Tensor], torch.device]) -> None:
        self.node = node
        self._device_of = virtual_device_of
        self._streams: dict[int, VirtualStream] = {}
        api = self

        class device:  # torch.cuda.device(idx): a context manager that makes idx current
            def __init__(self, device: object) -> None:
                self.idx = -1 if device is None or device == -1 else api.node.index_of(device)
                self.prev_idx = -1

            def __enter__(self) -> None:
                self.prev_idx = api.node.current_index
                if self.idx >= 0:
                    api.node.current_index = self.idx

            def __exit__(
                self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
            ) -> None:
                api.node.current_index = self.prev_idx

        class device_of(device):  # torch.cuda.device_of(tensor)
            def __init__(self, obj: torch.Tensor) -> None:
                virtual = api._device_of(obj)
                super().__init__(virtual.index if virtual.type == "cuda" else -1)

        self.device = device
        self.device_of = device_of

    # --- torch.cuda -----------------------------------------------------------------------------------------
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def init(self) -> None:
        return None

    def device_count(self) -> int:
        return self.node.device_count

    def current_device(self) -> int:
        return self.node.current_index

    def set_device(self, device: object) -> None:
        index = self.node.index_of(device)
        if index >= 0:
            self.node.current_index = index

    def _checked_id(self, device: object) -> int:
        """The ordinal for the property getters, which assert it in Python (torch/cuda/__init__.py)."""
        try:
            return self.node.index_of(device)
        except RuntimeError:
            raise AssertionError(INVALID_DEVICE_ID_MESSAGE) from None

    def get_device_properties(self, device: object = None) -> VirtualDeviceProperties:
        index = self._checked_id(device)
        name = self.node.names[index]
        major, minor = capability_of(name)
        return VirtualDeviceProperties(name, self.node.total_memory_bytes[index], major, minor)

    def get_device_name(self, device: object = None) -> str:
        return self.get_device_properties(device).name

    def get_device_capability(self, device: object = None) -> tuple[int, int]:
        properties = self.get_device_properties(device)
        return properties.major, properties.minor

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return including_emulation or self.get_device_capability()[0] >= 8

    def mem_get_info(self, device: object = None) -> tuple[int, int]:
        """(free, total) bytes: nothing is allocated on a simulated GPU."""
        total = self.node.total_memory_bytes[self.node.index_of(device)]
        return total, total

    def _zero(self, device: object = None) -> int:
        self.node.index_of(device)
        return 0

    def _nothing(self, device: object = None) -> None:
        if device is not None and not isinstance(device, bool):
            self.node.index_of(device)

    def memory_stats(self, device: object = None) -> dict[str, Any]:
        self.node.index_of(device)
        return {}

    def _seed(self, seed: object = None) -> None:
        return None

    def current_stream(self, device: object = None) -> VirtualStream:
        index = self.node.index_of(device)
        return self._streams.setdefault(index, VirtualStream(torch.device("cuda", index)))

    def stream(self, stream: object) -> _StreamContext:
        return _StreamContext(stream)

    def replacements(self) -> dict[str, object]:
        return {
            "is_available": self.is_available,
            "is_initialized": self.is_initialized,
            "init": self.init,
            "device_count": self.device_count,
            "current_device": self.current_device,
            "set_device": self.set_device,
            "device": self.device,
            "device_of": self.device_of,
            "get_device_properties": self.get_device_properties,
            "get_device_name": self.get_device_name,
            "get_device_capability": self.get_device_capability,
            "is_bf16_supported": self.is_bf16_supported,
            "mem_get_info": self.mem_get_info,
            "memory_allocated": self._zero,
            "memory_reserved": self._zero,
            "max_memory_allocated": self._zero,
            "max_memory_reserved": self._zero,
            "memory_stats": self.memory_stats,
            "reset_peak_memory_stats": self._nothing,
            "reset_max_memory_allocated": self._nothing,
            "empty_cache": self._nothing,
            "ipc_collect": self._nothing,
            "synchronize": self._nothing,
            "manual_seed": self._seed,
            "manual_seed_all": self._seed,
            "seed": self._seed,
            "seed_all": self._seed,
            "Stream": VirtualStream,
            "Event": VirtualEvent,
            "StreamContext": _StreamContext,
            "current_stream": self.current_stream,
            "default_stream": self.current_stream,
            "stream": self.stream,
        }

    def accelerator_replacements(self) -> dict[str, object]:
        """torch.accelerator (torch 2.6+) names the same node: CUDA is the current accelerator."""
        return {
            "is_available": self.is_available,
            "device_count": self.device_count,
            "current_accelerator": lambda check_available=False: torch.device("cuda"),
            "current_device_index": self.current_device,
            "current_device_idx": self.current_device,
            "set_device_index": self.set_device,
            "set_device_idx": self.set_device,
            "synchronize": self._nothing,
            "empty_cache": self._nothing,
        }

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_attributes(torch.cuda, self.replacements()))
            accelerator = getattr(torch, "accelerator", None)
            if accelerator is not None:
                stack.enter_context(_attributes(accelerator, self.accelerator_replacements()))
            yield


@contextlib.contextmanager
def _attributes(owner: object, values: dict[str, object]) -> Iterator[None]:
    """Set attributes for the life of the context; restore (or delete) them after."""
    missing = object()
    saved = {name: getattr(owner, name, missing) for name in values}
    try:
        for name, value in values.items():
            setattr(owner, name, value)
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
