"""The simulated node: how many GPUs, their names and memory, which one is current, and device parsing.

Device values reach the simulation as torch does accept them: `torch.device`, strings (`"cuda"`, `"cuda:1"`,
`"cpu"`, `"meta"`) and bare ints, which torch reads as ordinals of the accelerator (CUDA on a GPU node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# What torch raises when an ordinal is at or beyond the visible count (c10/cuda/CUDAException.h plus the hint
# lines of c10/cuda/CUDAMiscFunctions.cpp); lmms-eval #31 and VLMEvalKit #674 quote its first line.
INVALID_ORDINAL_MESSAGE = (
    "CUDA error: invalid device ordinal\n"
    "CUDA kernel errors might be asynchronously reported at any other API call, so the stacktrace below might be "
    "incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
# torch.cuda.get_device_properties (and get_device_name / get_device_capability, which call it) checks the
# ordinal in Python first and raises this instead (torch/cuda/__init__.py).
INVALID_DEVICE_ID_MESSAGE = "Invalid device id"

DEFAULT_NAME = "NVIDIA A100-SXM4-80GB"
DEFAULT_TOTAL_MEMORY_BYTES = 80 * 1024**3

# Compute capability by product name, for get_device_capability and is_bf16_supported; Ampere when unknown.
_CAPABILITY_BY_NAME = (
    ("B200", (10, 0)),
    ("H200", (9, 0)),
    ("H100", (9, 0)),
    ("H800", (9, 0)),
    ("L40", (8, 9)),
    ("L4", (8, 9)),
    ("4090", (8, 9)),
    ("A100", (8, 0)),
    ("A800", (8, 0)),
    ("A30", (8, 0)),
    ("A10", (8, 6)),
    ("A40", (8, 6)),
    ("A6000", (8, 6)),
    ("3090", (8, 6)),
    ("T4", (7, 5)),
    ("V100", (7, 0)),
    ("P100", (6, 0)),
    ("P40", (6, 1)),
)
CPU = torch.device("cpu")


def capability_of(name: str) -> tuple[int, int]:
    """The (major, minor) compute capability of a GPU product name; (8, 0) when the name is not known."""
    for marker, capability in _CAPABILITY_BY_NAME:
        if marker in name:
            return capability
    return (8, 0)


@dataclass
class SimulatedNode:
    """The GPUs the simulation shows torch, and the current CUDA ordinal (torch.cuda.set_device)."""

    names: tuple[str, ...]
    total_memory_bytes: tuple[int, ...]
    current_index: int = field(default=0)
    _resolved: dict[object, torch.device] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, device_count: int, names: Sequence[str] | None, total_memory_bytes: Sequence[int] | None
    ) -> SimulatedNode:
        if isinstance(device_count, bool) or not isinstance(device_count, int) or device_count < 1:
            raise ValueError(f"device_count must be a positive int, got {device_count!r}")
        resolved_names = tuple(names) if names is not None else (DEFAULT_NAME,) * device_count
        memory = (
            tuple(total_memory_bytes)
            if total_memory_bytes is not None
            else (DEFAULT_TOTAL_MEMORY_BYTES,) * device_count
        )
        for label, values in (("names", resolved_names), ("total_memory_bytes", memory)):
            if len(values) != device_count:
                raise ValueError(f"{label} has {len(values)} entries for {device_count} devices")
        return cls(resolved_names, memory)

    @property
    def device_count(self) -> int:
        return len(self.names)

    def check_ordinal(self, index: int) -> int:
        """`index` if the node has that GPU, else torch's `invalid device ordinal` RuntimeError."""
        if index < 0:
            raise RuntimeError(f"Device index must not be negative, got {index}")
        if index >= self.device_count:
            raise RuntimeError(INVALID_ORDINAL_MESSAGE)
        return index

    def current(self) -> torch.device:
        """`torch.device("cuda")` as the node reads it: the current GPU."""
        return torch.device("cuda", self.current_index)

    def resolve(self, spec: object) -> torch.device | None:
        """A device argument as the device torch would use on the node: None stays None, an int is a CUDA
        ordinal, `cuda` without an index is the current device; CUDA ordinals the node lacks raise."""
        if spec is None:
            return None
        if isinstance(spec, bool):  # True == 1 as a dict key
            raise TypeError(f"not a device: {spec!r}")
        try:
            return self._resolved[spec]
        except (KeyError, TypeError):
            pass
        device = self._resolve(spec)
        if device is not None and not (isinstance(spec, (str, torch.device)) and "cuda" in str(spec)
                                       and ":" not in str(spec)):  # fmt: skip
            self._resolved[spec] = device  # a bare `cuda` follows set_device, so it is resolved each time
        return device

    def _resolve(self, spec: object) -> torch.device | None:
        if isinstance(spec, bool):
            raise TypeError(f"not a device: {spec!r}")
        if isinstance(spec, int):
            return torch.device("cuda", self.check_ordinal(spec))
        device = spec if isinstance(spec, torch.device) else torch.device(spec)  # type: ignore[call-overload]
        if device.type != "cuda":
            return device
        index = self.current_index if device.index is None else device.index
        return torch.device("cuda", self.check_ordinal(index))

    def index_of(self, spec: object) -> int:
        """The CUDA ordinal a torch.cuda function's `device` argument names (None: the current one)."""
        device = self.resolve(spec)
        if device is None:
            return self.current_index
        if device.type != "cuda" or device.index is None:
            raise ValueError(f"Expected a cuda device, but got: {device}")
        return device.index


def is_device_spec(value: object) -> bool:
    """Whether a positional argument is a device (for `Tensor.to(device, ...)` and friends)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (torch.device, str, int))
