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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from diag.virtual.node import CPU


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
    # Calls that never check devices and never make fresh storage: metadata, grad mode, and one-tensor views.
    # Properties (shape, dtype, T, data, grad …) are all of this kind; see _PASSTHROUGH for the rest.
    PASSTHROUGH = "passthrough"
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
    # Metadata, or calls torch runs across devices by design: Module.to asks the first and assigns the second;
    # the *_as calls read only the other tensor's shape.
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

# One tensor in, metadata or a view of it out: the view shares the storage and so its label, and torch checks no
# device (a 0-dim tensor among the sizes is read as a number). `contiguous`, `reshape` and `flatten` can copy,
# so they are not here.
_PASSTHROUGH = frozenset({
    "torch.device", "torch._C._set_grad_enabled", "torch.is_grad_enabled", "torch.is_tensor",
    "torch.is_floating_point", "torch.is_complex", "torch.get_default_dtype",
    "Tensor.data_ptr", "Tensor.dim", "Tensor.ndimension", "Tensor.size", "Tensor.numel", "Tensor.nelement",
    "Tensor.stride", "Tensor.storage_offset", "Tensor.element_size", "Tensor.is_contiguous",
    "Tensor.is_floating_point", "Tensor.is_complex", "Tensor.__len__", "Tensor.requires_grad_",
    "Tensor.detach", "Tensor.detach_", "Tensor.view", "Tensor.transpose", "Tensor.t", "Tensor.permute",
    "Tensor.unsqueeze", "Tensor.squeeze", "Tensor.expand", "Tensor.select", "Tensor.narrow", "Tensor.unbind",
    "Tensor.split", "Tensor.chunk", "Tensor.unflatten", "Tensor.movedim", "Tensor.as_strided",
    "torch.transpose", "torch.permute", "torch.unsqueeze", "torch.squeeze", "torch.select", "torch.narrow",
    "torch.unbind", "torch.split", "torch.chunk", "torch.movedim", "torch.t",
})  # fmt: skip
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
    kind = _BY_NAME.get(name) or (Kind.PASSTHROUGH if name in _PASSTHROUGH else None)
    base = name.rsplit(".", 1)[-1]
    if kind is None and name.startswith("Tensor.") and base in ("__get__", "__set__"):
        kind = Kind.PASSTHROUGH  # other properties: shape, dtype, data, grad, T, requires_grad, ...
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


class Operand(NamedTuple):
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
    common = next((op.device for op in operands if op.device != CPU), operands[0].device)
    for operand in operands:
        if operand.device == common:
            continue
        if common != CPU and not operand.is_output and operand.is_cpu_scalar:
            continue  # TensorIterator: a CPU scalar input rides along with CUDA tensors
        return common, operand.device
    return None


def common_device(operands: Sequence[Operand], *, tensor_iterator: bool) -> torch.device | None:
    """Where a fresh output of an allowed op lives."""
    if not operands:
        return None
    if tensor_iterator:
        return next((op.device for op in operands if op.device != CPU), operands[0].device)
    return operands[0].device


def tensors_in(value: object) -> list[torch.Tensor]:
    """Tensors in an argument, looking inside lists, tuples and dict values (torch.cat's list, index tuples).

    Runs for every op under the mode, so it is a plain loop over the common shapes: a tensor, or a flat
    sequence of tensors and non-tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    found: list[torch.Tensor] = []
    if isinstance(value, dict):
        _collect(value.values(), found)
    elif isinstance(value, (list, tuple)):  # subclasses too: torch.return_types, ModelOutput's tuples
        _collect(value, found)
    return found


def tensors_of_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensor arguments of a call: positional first, then keyword values, in order."""
    found: list[torch.Tensor] = []
    _collect(args, found)
    if kwargs:
        _collect(kwargs.values(), found)
    return found


def _collect(items: Iterable[object], found: list[torch.Tensor]) -> None:
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple, dict)):
            _collect(item.values() if isinstance(item, dict) else item, found)
