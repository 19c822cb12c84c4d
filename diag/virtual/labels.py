"""The virtual device of each storage.

Every tensor is a CPU tensor; the device it would have on the node is a label on its storage, so views,
Parameters built on a tensor, and `param.data = t` all share the label of the memory they point at.

The key is the storage's identity (the address of its c10::StorageImpl, `untyped_storage()._cdata`), never
`data_ptr()`: every empty tensor has data pointer 0, and one shared label for all of them turned a passing
generate into a false cross-device error. An address can be reused once its storage
is freed, so each label holds a reference to its storage: the address cannot be reused while labelled. Labels
whose storage nobody else can reach any more are dropped in periodic sweeps.
"""

from __future__ import annotations

import sys

import torch

from diag.virtual.node import CPU

_FIRST_SWEEP = 4096
# torch._C._storage_Use_Count(cdata): the StorageImpl's strong reference count. Present in the torch versions
# diag supports; without it labels simply live until the context exits.
_use_count = getattr(torch._C, "_storage_Use_Count", None)
# sys.getrefcount of a storage object held only by its label entry: the entry's tuple and the call's argument.
_ONLY_OURS = 2


def storage_of(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage object; for functorch wrappers (vmap's BatchedTensor) the wrapped tensor's. Call with
    torch functions disabled or from inside the mode's handler, so this is not itself intercepted."""
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    functorch = torch._C._functorch
    if functorch.is_functorch_wrapped_tensor(tensor):
        return storage_of(functorch.get_unwrapped(tensor))
    return None  # sparse, nested and other storage-less layouts keep their real device


def storage_key(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, TypeError):
        storage = storage_of(tensor)
        return None if storage is None else int(storage._cdata)


class StorageLabels:
    """Virtual CUDA devices by storage identity; anything unlabelled is where torch really put it."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[torch.device, torch.UntypedStorage]] = {}
        self._sweep_at = _FIRST_SWEEP

    def __len__(self) -> int:
        return len(self._entries)

    def device_of(self, tensor: torch.Tensor) -> torch.device:
        """The virtual device: the label of the tensor's storage, else its real device."""
        key = storage_key(tensor)
        if key is not None:
            entry = self._entries.get(key)
            if entry is not None:
                return entry[0]
        return tensor.device

    def label_of_key(self, key: int) -> torch.device | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def set(self, tensor: torch.Tensor, device: torch.device) -> None:
        """Label the tensor's storage with a CUDA device; any other device removes the label, so a CPU (or
        meta) result never carries a stale CUDA label."""
        storage = storage_of(tensor)
        if storage is not None:
            self.set_storage(storage, device)

    def set_storage(self, storage: torch.UntypedStorage, device: torch.device) -> None:
        key = int(storage._cdata)
        if device == CPU or device.type != "cuda":
            self._entries.pop(key, None)
            return
        self._entries[key] = (device, storage)
        if len(self._entries) >= self._sweep_at:
            self.sweep()

    def sweep(self) -> None:
        """Drop labels whose storage only the label keeps alive: no tensor and no other Python object can
        reach it, so no later op can ask for it, and freeing it is what would happen without the simulation."""
        if _use_count is not None:
            for key in list(self._entries):
                if _use_count(key) == 1 and sys.getrefcount(self._entries[key][1]) <= _ONLY_OURS:
                    del self._entries[key]
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(self._entries))

    def clear(self) -> None:
        self._entries.clear()
        self._sweep_at = _FIRST_SWEEP


def is_cpu(device: torch.device) -> bool:
    return device.type == CPU.type
