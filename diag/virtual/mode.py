"""The TorchFunctionMode that runs CUDA work on the CPU while every tensor carries its virtual device.

FakeTensorMode is not usable here: it cannot run data-dependent steps (HF LLaVA's image-token count check,
InternVL's boolean-mask merge), and on the CPU-only build some ops fail with `PyTorch is not linked with
support for cuda devices`. So every op runs for real, on the CPU, and this mode
(1) answers `Tensor.device` and friends with the virtual device, (2) turns `.to()`, `.cuda()` and `device=`
arguments into CPU work plus a label, and (3) checks each op's tensor arguments as torch does on GPUs
before running it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from diag.virtual.errors import CrossDevice, indices_message, mask_message, numpy_message
from diag.virtual.labels import StorageLabels, storage_key, storage_of
from diag.virtual.modules import ModuleStack
from diag.virtual.node import CPU, SimulatedNode, is_device_spec
from diag.virtual.ops import (
    Kind,
    Operand,
    OpRule,
    classify,
    common_device,
    first_mismatch,
    tensors_in,
    tensors_of_call,
)

Handler = Callable[[OpRule, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
_MASK_DTYPES = (torch.bool, torch.uint8)


def _integer_scalar(tensor: torch.Tensor) -> bool:
    """A 0-dim integer index: Python indexing reads it with item() (a select), whatever its device."""
    return (
        tensor.dim() == 0
        and not tensor.is_floating_point()
        and not tensor.is_complex()
        and tensor.dtype not in _MASK_DTYPES
    )


def _advanced(index: object) -> bool:
    """Whether an index makes `x[index] = v` an index_put_ rather than a copy into a view."""
    if isinstance(index, list):
        return True
    items = index if isinstance(index, tuple) else (index,)
    return any(
        isinstance(item, list) or (isinstance(item, torch.Tensor) and not _integer_scalar(item)) for item in items
    )


class VirtualMode(TorchFunctionMode):
    """Virtual devices for one simulated node. Handlers run with this mode popped, so their own torch calls
    are plain CPU calls."""

    def __init__(
        self,
        node: SimulatedNode,
        labels: StorageLabels,
        modules: ModuleStack,
        record: Callable[[CrossDevice], None],
    ) -> None:
        super().__init__()
        self.node = node
        self.labels = labels
        self.modules = modules
        self._record = record
        self._rules: dict[Any, tuple[OpRule, Handler]] = {}
        self._handlers: dict[Kind, Handler] = {
            Kind.DEVICE: lambda rule, func, args, kwargs: self.labels.device_of(args[0]),
            Kind.IS_CUDA: lambda rule, func, args, kwargs: self.labels.device_of(args[0]).type == "cuda",
            Kind.IS_CPU: lambda rule, func, args, kwargs: self.labels.device_of(args[0]).type == "cpu",
            Kind.GET_DEVICE: self._get_device,
            Kind.TYPE: self._type,
            Kind.TYPE_AS: self._type_as,
            Kind.TO: self._to,
            Kind.PARSE_TO: self._parse_to,
            Kind.CUDA: self._cuda,
            Kind.CPU: self._cpu,
            Kind.NUMPY: self._numpy,
            Kind.PIN_MEMORY: self._pin_memory,
            Kind.COPY: lambda rule, func, args, kwargs: func(*args, **kwargs),
            Kind.GETITEM: self._getitem,
            Kind.SETITEM: self._setitem,
            Kind.INDEX_PUT: self._index_put,
            Kind.MASKED_FILL: self._masked_fill,
            Kind.FROM_DATA: self._from_data,
            Kind.REPR: self._repr,
            Kind.PASSTHROUGH: lambda rule, func, args, kwargs: func(*args, **kwargs),
            Kind.UNCHECKED: self._generic,
            Kind.POINTWISE: self._generic,
            Kind.EXACT: self._generic,
        }

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        try:
            rule, handler = self._rules[func]  # the device getter is a fresh method-wrapper each time: equal
        except KeyError:
            rule = classify(func)
            rule, handler = self._rules.setdefault(func, (rule, self._handlers[rule.kind]))
        except TypeError:
            rule = classify(func)
            handler = self._handlers[rule.kind]
        return handler(rule, func, args, kwargs or {})

    # --- helpers --------------------------------------------------------------------------------------------
    def _cross(
        self, rule: OpRule, first: torch.device, second: torch.device, message: str | None = None
    ) -> RuntimeError:
        """Record the violation (devices in the order torch names them) and build torch's error for it:
        the same-device text unless the op has its own."""
        record = CrossDevice(rule.name, (str(first), str(second)), self.modules.current())
        self._record(record)
        return RuntimeError(record.message() if message is None else message)

    def _label_fresh(self, result: object, input_keys: Collection[int | None], device: torch.device) -> None:
        """Outputs that alias an input storage keep its label; fresh ones take the op's device."""
        if isinstance(result, torch.Tensor):
            storage = storage_of(result)
            if storage is not None and storage._cdata not in input_keys:
                self.labels.set_storage(storage, device)
            return
        for tensor in tensors_in(result):
            key = storage_key(tensor)
            if key is not None and key not in input_keys:
                self.labels.set(tensor, device)

    def _moved(
        self, tensor: torch.Tensor, result: torch.Tensor, source: torch.device, target: torch.device
    ) -> torch.Tensor:
        """`result` of moving `tensor` from `source` to `target`: a copy whenever the device changes (torch
        returns the tensor itself only when it is already there), labelled with `target`."""
        if result is tensor and target == source:
            return result  # already there: accelerate's hooks move every input of every module like this
        aliased = storage_key(result) == storage_key(tensor)
        if target == source:
            if not aliased:
                self.labels.set(result, target)
            return result
        if aliased:
            result = result.clone()
        self.labels.set(result, target)
        return result

    def _take_devices(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], torch.device | None]:
        """Replace CUDA `device=` arguments (and positional torch.device values) by the CPU; return the
        virtual device they named. Ordinals the node lacks raise `invalid device ordinal` here, as the
        allocation would on the node."""
        explicit: torch.device | None = None
        if kwargs.get("device") is None and not any(type(arg) is torch.device for arg in args):
            return args, kwargs, None
        if kwargs.get("device") is not None:
            explicit = self.node.resolve(kwargs["device"])
            if explicit is not None and explicit.type == "cuda":
                kwargs = {**kwargs, "device": CPU}
        if any(isinstance(arg, torch.device) and arg.type == "cuda" for arg in args):
            replaced = list(args)
            for position, arg in enumerate(args):
                if isinstance(arg, torch.device) and arg.type == "cuda":
                    explicit = self.node.resolve(arg)
                    replaced[position] = CPU
            args = tuple(replaced)
        return args, kwargs, explicit

    def _operands(
        self,
        rule: OpRule,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        tensors: list[torch.Tensor],
        devices: list[torch.device],
    ) -> list[Operand]:
        """The tensors torch checks, in the order it checks them, with their devices (`tensors` and `devices`:
        every tensor argument, positional then keyword, and where each is)."""
        operands: list[Operand] = []
        if kwargs.get("out") is not None:  # outputs come first; rebuild the order without them
            outputs = tensors_in(kwargs["out"])
            operands = [Operand(self.labels.device_of(tensor), True, False) for tensor in outputs]
            tensors = tensors_of_call(args, {k: v for k, v in kwargs.items() if k != "out"})
            devices = [self.labels.device_of(tensor) for tensor in tensors]
        ordered = list(zip(tensors, devices, strict=True))
        if rule.reflected and len(ordered) >= 2:
            ordered[0], ordered[1] = ordered[1], ordered[0]
        elif rule.name == "torch.nn.functional.embedding" and len(ordered) >= 2:
            ordered[0], ordered[1] = ordered[1], ordered[0]  # F.embedding(input, weight) checks weight first
        elif rule.name == "torch.nn.functional.linear" and len(ordered) == 3:
            source, weight, bias = ordered
            if source[0].dim() == 2 or source[0].is_contiguous():  # aten::linear's fused addmm(bias, input, weight.t())
                ordered = [bias, source, weight]
        skip_scalars = rule.scalar_args
        for position, (tensor, device) in enumerate(ordered):
            scalar = tensor.dim() == 0
            if scalar and skip_scalars and (rule.factory or position > 0):
                continue
            operands.append(Operand(device, rule.inplace and position == 0, scalar and device == CPU))
        return operands

    def _check_put(
        self, rule: OpRule, tensor: torch.Tensor, indices: list[torch.Tensor], value: torch.Tensor, accumulate: bool
    ) -> None:
        """index_put_ (what `x[mask] = v` runs): indices may live anywhere (make_info moves them to self's
        device); a 0-dim value is moved too; a one-element CPU value with one mask on self's device takes the
        masked_fill path; otherwise value and self meet in a TensorIterator
        (aten/src/ATen/native/TensorAdvancedIndexing.cpp, _index_put_impl_). InternVL #133 is this check."""
        self_device = self.labels.device_of(tensor)
        value_device = self.labels.device_of(value)
        if value_device == self_device or value.dim() == 0:
            return
        if (
            not accumulate
            and value.numel() == 1
            and value_device.type == "cpu"
            and len(indices) == 1
            and indices[0].dtype in _MASK_DTYPES
            and self.labels.device_of(indices[0]) == self_device
        ):
            return
        operands = [Operand(self_device, True, False), Operand(value_device, False, False)]
        mismatch = first_mismatch(operands, tensor_iterator=True)
        if mismatch is not None:
            raise self._cross(rule, *mismatch)

    # --- handlers -------------------------------------------------------------------------------------------
    def _generic(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Every op but the few with their own handler comes here, so the common case (positional tensors, no
        # `device=` or `out=`) finds its tensors in one loop.
        if kwargs and (kwargs.get("device") is not None or kwargs.get("out") is not None):
            return self._generic_full(rule, func, args, kwargs)
        tensors: list[torch.Tensor] = []
        for arg in args:
            if isinstance(arg, torch.Tensor):
                tensors.append(arg)
            elif type(arg) is torch.device:
                return self._generic_full(rule, func, args, kwargs)
            elif isinstance(arg, (list, tuple, dict)):
                tensors.extend(tensors_in(arg))
        if kwargs:
            tensors.extend(tensors_of_call((), kwargs))
        if not tensors:
            return func(*args, **kwargs)
        return self._labelled(rule, func, args, kwargs, None, tensors)

    def _generic_full(
        self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        args, kwargs, device = self._take_devices(args, kwargs)
        return self._labelled(rule, func, args, kwargs, device, tensors_of_call(args, kwargs))

    def _labelled(
        self,
        rule: OpRule,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        device: torch.device | None,
        tensors: list[torch.Tensor],
    ) -> Any:
        """Run the op by its tensors' labels. Without a `device=` argument two cases skip the checks: nothing on
        a virtual GPU (torch checks the real devices itself, and a fresh output cannot carry a label either:
        labelled storages are kept alive, so their addresses are not reused), and everything on one virtual GPU
        (most ops of a forward: every rule passes and the output lives there)."""
        keys = [storage_key(tensor) for tensor in tensors]
        label_of = self.labels.label_of_key
        labels = [None if key is None else label_of(key) for key in keys]
        if device is None:
            first = labels[0] if labels else None
            if labels.count(first) == len(labels):
                result = func(*args, **kwargs)
                if first is not None:
                    self._label_fresh(result, keys, first)
                return result
        return self._checked(rule, func, args, kwargs, device, tensors, keys, labels)

    def _checked(
        self,
        rule: OpRule,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        device: torch.device | None,
        tensors: list[torch.Tensor],
        keys: list[int | None],
        labels: list[torch.device | None],
    ) -> Any:
        """Check the tensor arguments as torch does, run the op, label its fresh outputs. `device` is where a
        `device=` argument put the result; `labels` are the tensors' virtual devices (None: not on one)."""
        if tensors:
            devices = [tensor.device if label is None else label for tensor, label in zip(tensors, labels, strict=True)]
            first = devices[0]
            common: torch.device | None = first
            if rule.kind is Kind.UNCHECKED or devices.count(first) == len(devices):
                pass  # one device (the common case) passes every rule, and the output lives there
            else:
                tensor_iterator = rule.kind is Kind.POINTWISE
                operands = self._operands(rule, args, kwargs, tensors, devices)
                mismatch = first_mismatch(operands, tensor_iterator=tensor_iterator)
                if mismatch is not None:
                    raise self._cross(rule, *mismatch)
                common = common_device(operands, tensor_iterator=tensor_iterator)
            device = device if device is not None else common
        result = func(*args, **kwargs)
        if device is not None:
            self._label_fresh(result, keys, device)
        return result

    def _get_device(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        device = self.labels.device_of(args[0])
        if device.type == "cuda":
            return device.index if device.index is not None else self.node.current_index
        return int(func(*args, **kwargs))

    def _type(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) == 1 and not kwargs:
            name = str(func(*args))
            if self.labels.device_of(args[0]).type == "cuda":
                return name.replace("torch.", "torch.cuda.", 1)
            return name
        return self._generic(rule, func, args, kwargs)

    def _type_as(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor, other = args[0], args[1]
        source, other_device = self.labels.device_of(tensor), self.labels.device_of(other)
        if source.type == other_device.type:
            target = source
        else:  # x.type(other.type()): a CUDA type moves x to the current device, a CPU type to the CPU
            target = self.node.current() if other_device.type == "cuda" else other_device
        return self._moved(tensor, func(*args, **kwargs), source, target)

    def _to(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Tensor.to(device=None, dtype=None, non_blocking=False, copy=False), to(dtype, ...), to(other, ...);
        # Module.to calls it as t.to(device_or_None, dtype_or_None, non_blocking_bool).
        tensor = args[0]
        source = self.labels.device_of(tensor)
        target: torch.device | None = None
        replaced = list(args)
        if len(args) > 1:
            first = args[1]
            if isinstance(first, torch.Tensor):
                target = self.labels.device_of(first)
            elif is_device_spec(first):
                target = self.node.resolve(first)
                if target is not None and target.type == "cuda":
                    replaced[1] = CPU
        if kwargs.get("device") is not None:
            target = self.node.resolve(kwargs["device"])
            if target is not None and target.type == "cuda":
                kwargs = {**kwargs, "device": CPU}
        result = func(*replaced, **kwargs)
        return self._moved(tensor, result, source, target if target is not None else source)

    def _parse_to(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Module.to(device) parses its arguments with this before calling Tensor.to on each tensor (accelerate's
        # send_to_device reaches it with a bare int for any object that has a `.to`).
        explicit: torch.device | None
        args, kwargs, explicit = self._take_devices(args, kwargs)
        if args and isinstance(args[0], torch.Tensor):
            explicit = self.labels.device_of(args[0])
        elif args and is_device_spec(args[0]) and not isinstance(args[0], torch.device):
            explicit = self.node.resolve(args[0])
            if explicit is not None and explicit.type == "cuda":
                args = (CPU, *args[1:])
        device, dtype, non_blocking, memory_format = func(*args, **kwargs)
        return (explicit if explicit is not None else device), dtype, non_blocking, memory_format

    def _cuda(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor = args[0]
        spec = args[1] if len(args) > 1 else kwargs.get("device")
        target = self.node.resolve("cuda" if spec is None else spec)
        if target is None or target.type != "cuda":
            raise RuntimeError("Invalid device, must be cuda device")
        return self._moved(tensor, tensor, self.labels.device_of(tensor), target)

    def _cpu(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor = args[0]
        return self._moved(tensor, func(*args, **kwargs), self.labels.device_of(tensor), CPU)

    def _numpy(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = self.labels.device_of(args[0])
        if device.type == "cuda":
            raise TypeError(numpy_message(str(device)))
        return func(*args, **kwargs)

    def _pin_memory(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # A CPU-only torch cannot pin (it needs an accelerator); on the node pinning copies a CPU tensor and
        # refuses a GPU one (aten/src/ATen/native/Memory.cpp).
        device = self.labels.device_of(args[0])
        if device.type == "cuda":
            raise RuntimeError(
                f"cannot pin '{self._type(rule, torch.Tensor.type, args[:1], {})}' only dense CPU tensors can be pinned"
            )
        return args[0].clone()

    def _getitem(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # `x[idx]` (and aten.index): index tensors must be on the CPU or on x's device
        # (check_indices_on_cpu_or_selfdevice, pytorch PR #69607); a 0-dim integer index is read with item().
        tensor, index = args[0], args[1]
        self_device = self.labels.device_of(tensor)
        for index_tensor in tensors_in(index):
            if _integer_scalar(index_tensor):
                continue
            index_device = self.labels.device_of(index_tensor)
            if index_device.type != "cpu" and index_device != self_device:
                raise self._cross(rule, self_device, index_device, indices_message(str(self_device)))
        keys = {key for t in tensors_in(args) if (key := storage_key(t)) is not None}
        result = func(*args, **kwargs)
        self._label_fresh(result, keys, self_device)
        return result

    def _setitem(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Basic indexing copies into a view (copy_ crosses devices freely); advanced indexing is index_put_.
        tensor, index, value = args[0], args[1], args[2]
        if isinstance(value, torch.Tensor) and _advanced(index):
            indices = [t for t in tensors_in(index) if not _integer_scalar(t)]
            self._check_put(rule, tensor, indices, value, accumulate=False)
        return func(*args, **kwargs)

    def _index_put(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor = args[0]
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        value = args[2] if len(args) > 2 else kwargs.get("values")
        accumulate = bool(args[3] if len(args) > 3 else kwargs.get("accumulate", False))
        if isinstance(value, torch.Tensor):
            self._check_put(rule, tensor, list(tensors_in(indices)), value, accumulate)
        keys = {key for t in tensors_in((args, kwargs)) if (key := storage_key(t)) is not None}
        result = func(*args, **kwargs)
        self._label_fresh(result, keys, self.labels.device_of(tensor))
        return result

    def _masked_fill(
        self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # The CUDA kernel reads a 0-dim value with item(), from any device; the mask must be on self's device,
        # with its own message (aten/src/ATen/native/cuda/Indexing.cu, masked_fill__cuda).
        tensor = args[0]
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        self_device = self.labels.device_of(tensor)
        if isinstance(mask, torch.Tensor):
            mask_device = self.labels.device_of(mask)
            if mask_device != self_device:
                raise self._cross(rule, mask_device, self_device, mask_message(str(mask_device), str(self_device)))
        keys = {key for t in tensors_in((args, kwargs)) if (key := storage_key(t)) is not None}
        result = func(*args, **kwargs)
        self._label_fresh(result, keys, self_device)
        return result

    def _from_data(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # torch.tensor / as_tensor / asarray: a tensor argument is data, not an operand; the result lives on
        # `device=` if given, else (for tensor data) where the data is, else on the CPU.
        if rule.name == "torch.as_tensor" and len(args) > 2 and "device" not in kwargs and is_device_spec(args[2]):
            args, kwargs = args[:2], {**kwargs, "device": args[2]}
        args, kwargs, explicit = self._take_devices(args, kwargs)
        data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
        result = func(*args, **kwargs)
        if isinstance(data, torch.Tensor):
            source = self.labels.device_of(data)
            return self._moved(data, result, source, explicit if explicit is not None else source)
        if explicit is not None:
            self._label_fresh(result, set(), explicit)
        return result

    def _repr(self, rule: OpRule, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # torch prints `device='cuda:0'` from tensor.device: format with the mode on, through the formatter
        # itself (calling Tensor.__repr__ again would come straight back here).
        if self.labels.device_of(args[0]).type != "cuda":
            return func(*args, **kwargs)
        with self:
            return torch._tensor_str._str(args[0], **kwargs)  # type: ignore[no-untyped-call]
