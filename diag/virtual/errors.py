"""What a same-device violation records, and the error text torch gives for it."""

from __future__ import annotations

from dataclasses import dataclass

SAME_DEVICE_PREFIX = "Expected all tensors to be on the same device, but found at least two devices"


@dataclass(frozen=True)
class CrossDevice:
    """One op that mixed devices: the op as called, the two devices as torch names them, and the dotted name of
    the innermost nn.Module whose forward was running ("" for the tracked root model, None outside any)."""

    op: str
    devices: tuple[str, str]
    module: str | None

    def message(self) -> str:
        """torch's text, `... found at least two devices, cuda:0 and cuda:1!`, then where it happened.

        The core is TensorIterator's wording (aten/src/ATen/TensorIterator.cpp), the one the InternVL,
        VLMEvalKit and CogVLM threads quote. torch 2.8 and later word the per-argument check of non-elementwise
        ops (mm, bmm, index_select, ...) as `Expected all tensors to be on the same device, but got mat2 is on
        cuda:1, different from other tensors on cuda:0 (when checking argument in method wrapper_CUDA_bmm)`
        (pytorch PR #155085); both start with `Expected all tensors to be on the same device, but`.
        """
        first, second = self.devices
        if self.module is None:
            where = self.op
        else:
            where = f"{self.op} in module {self.module}" if self.module else f"{self.op} in the model's own forward"
        return f"{SAME_DEVICE_PREFIX}, {first} and {second}! (when checking arguments of {where}; virtual devices)"


def indices_message(self_device: str) -> str:
    """torch's text when an index tensor is neither on the CPU nor on the indexed tensor's device
    (check_indices_on_cpu_or_selfdevice in aten/src/ATen/native/TensorAdvancedIndexing.cpp, pytorch PR #69607)."""
    return f"indices should be either on cpu or on the same device as the indexed tensor ({self_device})"


def mask_message(mask_device: str, self_device: str) -> str:
    """torch's text when masked_fill's mask is not on self's device (masked_fill__cuda in
    aten/src/ATen/native/cuda/Indexing.cu; the CPU kernel says the same)."""
    return f"expected self and mask to be on the same device, but got mask on {mask_device} and self on {self_device}"


def numpy_message(device: str) -> str:
    """torch's TypeError for `.numpy()` of a GPU tensor (torch/csrc/utils/tensor_numpy.cpp)."""
    return (
        f"can't convert {device} device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."
    )
