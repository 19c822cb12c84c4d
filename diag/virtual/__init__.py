"""Virtual CUDA devices on a CPU-only torch.

A model dispatched by accelerate over N simulated GPUs runs on the CPU while every tensor carries a virtual
device; any op that mixes devices raises what torch raises on real GPUs:

    with VirtualCuda(4, model=model) as node:
        dispatch_model(model, device_map=device_map)  # a map without model.rotary_emb, transformers 4.45
        model(input_ids.to("cuda:0"))  # RuntimeError: ... found at least two devices, cpu and cuda:0!
    node.last_error  # CrossDevice(op="Tensor.matmul", devices=("cpu", "cuda:0"), module="model.rotary_emb")
"""

from __future__ import annotations

from diag.virtual.context import VirtualCuda, current_module_path
from diag.virtual.cuda_api import VirtualDeviceProperties
from diag.virtual.errors import CrossDevice
from diag.virtual.node import INVALID_ORDINAL_MESSAGE
from diag.virtual.ordinals import cuda_ordinals_in_accelerate

__all__ = [
    "INVALID_ORDINAL_MESSAGE",
    "CrossDevice",
    "VirtualCuda",
    "VirtualDeviceProperties",
    "cuda_ordinals_in_accelerate",
    "current_module_path",
]
