"""Which same-device rule torch applies to an op, named as the caller called it.

torch checks devices in two ways (read from its source):
- TensorIterator ops (elementwise, `device_check: NoCheck  # TensorIterator` in native_functions.yaml): the
  common device is the first non-CPU operand, outputs first; a 0-dim CPU *input* is a scalar and mixes freely
  with CUDA tensors; anything else off the common device raises `found at least two devices, {common} and
  {other}!`. aten tags these ops `pointwise`, which is how they are recognised here.
- Every other op checks its tensor arguments in order against the first one (codegen'd
  `check_and_update_common_device`): no scalar exemption.
Indexing has its own rules (see the mode): CPU index tensors may index a CUDA tensor.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class Kind(enum.Enum):
    DEVICE = "device"  # Tensor.device getter
    IS_CUDA = "is_cuda"
    IS_CPU = "is_cpu"
    GET_DEVICE = "get_device"
    TYPE = "type"  # Tensor.type() -> 'torch.cuda.FloatTensor'
    TYPE_AS = "type_as"
    TO = "to"
    PARSE_TO = "parse_to"  # torch._C._nn._parse_to, which Module.to asks first
    CUDA = "cuda"
    CPU = "cpu"
    NUMPY = "numpy"
    PIN_MEMORY = "pin_memory"
    COPY = "copy"  # copy_: cross-device copies are allowed
    GETITEM = "getitem"
    SETITEM = "setitem"
    INDEX_PUT = "index_put"
    MASKED_FILL = "masked_fill"
    FROM_DATA = "from_data"  # torch.tensor / as_tensor / asarray
    REPR = "repr"
    UNCHECKED = "unchecked"  # metadata, shape-only and cross-device-by-design calls
    POINTWISE = "pointwise"
    EXACT = "exact"


@dataclass(frozen=True)
class OpRule:
    name: str
    kind: Kind
    inplace: bool = False  # the first tensor argument is also the output (TensorIterator counts it as one)
    reflected: bool = False  # Tensor.__radd__(self, other) computes other + self
    scalar_args: bool = False  # 0-dim tensors after the first tensor argument are Python scalars to this op
    factory: bool = False  # no tensor is `self`: every 0-dim tensor argument is a scalar


_BY_NAME: dict[str, Kind] = {
    "Tensor.device.__get__": Kind.DEVICE,
    "Tensor.is_cuda.__get__": Kind.IS_CUDA,
    "Tensor.is_cpu.__get__": Kind.IS_CPU,
    "Tensor.get_device": Kind.GET_DEVICE,
    "Tensor.type": Kind.TYPE,
    "Tensor.type_as": Kind.TYPE_AS,
    "Tensor.to": Kind.TO,
    "torch.nn.functional._parse_to": Kind.PARSE_TO,
    "Tensor.cuda": Kind.CUDA,
    "Tensor.cpu": Kind.CPU,
    "Tensor.numpy": Kind.NUMPY,
    "Tensor.__array__": Kind.NUMPY,
    "Tensor.pin_memory": Kind.PIN_MEMORY,
    "Tensor.copy_": Kind.COPY,
    "aten.copy_": Kind.COPY,
    "Tensor.__getitem__": Kind.GETITEM,
    "aten.index": Kind.GETITEM,
    "Tensor.__setitem__": Kind.SETITEM,
    "Tensor.index_put_": Kind.INDEX_PUT,
    "Tensor.index_put": Kind.INDEX_PUT,
    "torch.index_put": Kind.INDEX_PUT,
    "torch.index_put_": Kind.INDEX_PUT,
    "aten.index_put": Kind.INDEX_PUT,
    "aten.index_put_": Kind.INDEX_PUT,
    "Tensor.masked_fill": Kind.MASKED_FILL,
    "Tensor.masked_fill_": Kind.MASKED_FILL,
    "torch.masked_fill": Kind.MASKED_FILL,
    "torch.tensor": Kind.FROM_DATA,
    "torch.as_tensor": Kind.FROM_DATA,
    "torch.asarray": Kind.FROM_DATA,
    "Tensor.__repr__": Kind.REPR,
    # Metadata, or calls torch runs across devices by design: Module.to asks the first and assigns the second
    # (DESIGN.md, "Simulation"); the *_as calls read only the other tensor's shape.
    "torch._has_compatible_shallow_copy_type": Kind.UNCHECKED,
    "Tensor.is_set_to": Kind.UNCHECKED,
    "Tensor.is_same_size": Kind.UNCHECKED,
    "torch.is_same_size": Kind.UNCHECKED,
    "Tensor.expand_as": Kind.UNCHECKED,
    "Tensor.view_as": Kind.UNCHECKED,
    "Tensor.reshape_as": Kind.UNCHECKED,
    "torch.broadcast_tensors": Kind.UNCHECKED,
    "torch.result_type": Kind.UNCHECKED,
    "Tensor.new_tensor": Kind.UNCHECKED,
    "Tensor.set_": Kind.UNCHECKED,
    "Tensor.__deepcopy__": Kind.UNCHECKED,
    "Tensor.__reduce_ex__": Kind.UNCHECKED,
    "Tensor.__setstate__": Kind.UNCHECKED,
    "Tensor.register_hook": Kind.UNCHECKED,
}

_DUNDERS = {
    "add": "add", "sub": "sub", "mul": "mul", "truediv": "div", "div": "div", "floordiv": "floor_divide",
    "mod": "remainder", "pow": "pow", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor",
    "lshift": "bitwise_left_shift", "rshift": "bitwise_right_shift", "matmul": "matmul",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
}  # fmt: skip
# TensorIterator ops that aten does not tag pointwise.
_TENSOR_ITERATOR_UNTAGGED = frozenset({"floor_divide", "bitwise_and", "bitwise_or", "bitwise_xor"})
# Ops whose non-self tensor arguments may be 0-dim tensors standing for Python numbers (sizes, bounds, fill
# values): torch reads them with item(), so their device never matters.
_FACTORIES = frozenset({
    "arange", "range", "linspace", "logspace", "full", "zeros", "ones", "empty", "rand", "randn", "randint",
    "randperm", "eye",
})  # fmt: skip
_SCALAR_ARGS = frozenset({
    "view", "reshape", "expand", "repeat", "narrow", "select", "split", "chunk", "tile", "roll", "unflatten",
    "new_full", "new_zeros", "new_ones", "new_empty", "full_like", "fill_", "fill", "topk", "kthvalue",
    "index_fill", "index_fill_", "tensor_split", "movedim", "permute", "transpose", "flatten", "unsqueeze",
    "squeeze", "sum", "mean", "cumsum", "softmax", "log_softmax", "argmax", "argmin", "repeat_interleave",
})  # fmt: skip

_PUBLIC_MODULES = {
    "torch._C._nn": "torch.nn.functional",
    "torch._C._linalg": "torch.linalg",
    "torch._C._special": "torch.special",
    "torch._C._fft": "torch.fft",
    "torch.functional": "torch",
    "torch._tensor": "Tensor",
}


def op_name(func: Callable[..., Any]) -> str:
    """The op as the caller wrote it: `torch.matmul`, `Tensor.__mul__`, `Tensor.device.__get__`,
    `torch.nn.functional.linear`, `aten.index`."""
    if isinstance(func, torch._ops.OpOverload):
        return f"{func.namespace}.{func.overloadpacket.__name__}"
    if isinstance(func, torch._ops.OpOverloadPacket):
        return str(func._qualified_op_name).replace("::", ".")
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor":  # property access arrives as a fresh method-wrapper
        return f"Tensor.{owner.__name__}.{func.__name__}"  # type: ignore[union-attr]
    qualname = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)
    head, _, tail = qualname.partition(".")
    if tail and head in ("TensorBase", "Tensor"):
        return f"Tensor.{tail}"
    if tail and head == "_VariableFunctionsClass":
        return f"torch.{tail}"
    module = str(getattr(func, "__module__", None) or "")
    module = _PUBLIC_MODULES.get(module, module)
    return f"{module}.{qualname}" if module else qualname


def classify(func: Callable[..., Any]) -> OpRule:
    name = op_name(func)
    kind = _BY_NAME.get(name)
    base = name.rsplit(".", 1)[-1]
    if kind is None and name.startswith("Tensor.") and base in ("__get__", "__set__"):
        kind = Kind.UNCHECKED  # other properties: shape, dtype, data, grad, T, requires_grad, ...
    inplace = reflected = False
    if base.startswith("__") and base.endswith("__"):
        core = base[2:-2]
        if core.startswith("i") and core[1:] in _DUNDERS:
            core, inplace = core[1:], True
        elif core.startswith("r") and core[1:] in _DUNDERS:
            core, reflected = core[1:], True
        aten = "rsub" if (reflected and core == "sub") else _DUNDERS.get(core, core)
    else:
        aten = base
        if aten.endswith("_") and not aten.startswith("_"):
            aten, inplace = aten[:-1], True
    if kind is None:
        kind = Kind.POINTWISE if is_tensor_iterator(aten) else Kind.EXACT
    return OpRule(
        name=name,
        kind=kind,
        inplace=inplace,
        reflected=reflected,
        scalar_args=aten in _SCALAR_ARGS or aten in _FACTORIES,
        factory=aten in _FACTORIES and not name.startswith("Tensor."),
    )


@functools.cache
def is_tensor_iterator(aten_name: str) -> bool:
    """Whether torch runs the op through TensorIterator: aten's `pointwise` tag, plus a few it leaves untagged."""
    if aten_name in _TENSOR_ITERATOR_UNTAGGED:
        return True
    try:
        packet = getattr(torch.ops.aten, aten_name)
    except (AttributeError, RuntimeError):
        return False
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return False
    return any(torch.Tag.pointwise in getattr(packet, overload).tags for overload in packet.overloads())  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Operand:
    device: torch.device
    is_output: bool
    is_cpu_scalar: bool  # 0-dim and on the CPU


def first_mismatch(operands: Sequence[Operand], *, tensor_iterator: bool) -> tuple[torch.device, torch.device] | None:
    """The (common, offending) device pair torch would report, or None when the op is allowed."""
    if not operands:
        return None
    if not tensor_iterator:
        common = operands[0].device
        for operand in operands[1:]:
            if operand.device != common:
                return common, operand.device
        return None
    common = next((op.device for op in operands if op.device.type != "cpu"), operands[0].device)
    for operand in operands:
        if operand.device == common:
            continue
        if common.type != "cpu" and not operand.is_output and operand.is_cpu_scalar:
            continue  # TensorIterator: a CPU scalar input rides along with CUDA tensors
        return common, operand.device
    return None


def common_device(operands: Sequence[Operand], *, tensor_iterator: bool) -> torch.device | None:
    """Where a fresh output of an allowed op lives."""
    if not operands:
        return None
    if tensor_iterator:
        return next((op.device for op in operands if op.device.type != "cpu"), operands[0].device)
    return operands[0].device


def tensors_in(value: object) -> Iterator[torch.Tensor]:
    """Tensors in an argument, looking inside lists, tuples and dict values (torch.cat's list, index tuples)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
