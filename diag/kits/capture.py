"""Run an eval kit's model constructor with the loaders intercepted, to see what it would load and where.

Inside `intercepted(...)`:
- every transformers `from_pretrained` (auto classes, concrete model classes, processors, tokenizers, configs)
  records its arguments and returns a stand-in object instead of reading anything;
- the stand-in model records the moves made on it afterwards (`.to(...)`, `.cuda()`);
- accelerate's `Accelerator` reports the simulated process index and count, without a process group;
- `torch.cuda` reports the simulated node's GPUs (count, current device; `set_device` is followed);
- `torch.load`, safetensors and the hub's download functions raise `WeightReadStopped`: nothing is downloaded,
  no weight is read, no GPU memory is taken.
The environment variables given (LOCAL_RANK, AUTO_SPLIT, CUDA_VISIBLE_DEVICES, …) are set for the run and
restored after it, as is everything patched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class WeightReadStopped(RuntimeError):
    """Raised where the kit would read weights or download: the capture stops there."""


@dataclass
class Load:
    """One `from_pretrained` call: which class, which checkpoint, and the keyword arguments that matter."""

    owner: str
    checkpoint: str | None
    device_map: Any
    has_device_map: bool
    dtype: Any
    is_model: bool
    moves: list[str] = field(default_factory=list)  # `.to(...)` / `.cuda()` made on the loaded model, in order


@dataclass
class Capture:
    """What the constructor did under interception."""

    loads: list[Load] = field(default_factory=list)
    current_device: int = 0

    @property
    def model(self) -> Load | None:
        return next((load for load in self.loads if load.is_model), None)


_MODEL_BASES = ("PreTrainedModel",)
_STUB_SUFFIXES = ("Tokenizer", "TokenizerFast", "Processor", "ImageProcessor", "Config", "FeatureExtractor")


class _Stub:
    """A permissive stand-in: any attribute is another stub, any call returns a stub."""

    def __init__(self, name: str = "stub") -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Stub(f"{self._name}()")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __bool__(self) -> bool:
        return True

    def __int__(self) -> int:
        return 0

    def __index__(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def __getitem__(self, key: Any) -> Any:
        return _Stub(f"{self._name}[]")


class _ModelStub(_Stub):
    """The loaded model's stand-in: records the moves made on it."""

    def __init__(self, load: Load, capture: Capture) -> None:
        super().__init__(load.owner)
        object.__setattr__(self, "_load", load)
        object.__setattr__(self, "_capture", capture)

    def to(self, *args: Any, **kwargs: Any) -> _ModelStub:
        target = kwargs.get("device", args[0] if args else None)
        if target is not None and _is_device(target):
            self._load.moves.append(_device_text(target, self._capture))
        return self

    def cuda(self, device: Any = None) -> _ModelStub:
        self._load.moves.append(_device_text("cuda" if device is None else _cuda_of(device), self._capture))
        return self

    def eval(self) -> _ModelStub:
        return self

    def half(self) -> _ModelStub:
        return self

    def bfloat16(self) -> _ModelStub:
        return self

    def float(self) -> _ModelStub:
        return self

    def requires_grad_(self, *args: Any) -> _ModelStub:
        return self


def _is_device(value: Any) -> bool:
    import torch

    if isinstance(value, torch.device | int) and not isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value.split(":")[0] in ("cuda", "cpu", "meta", "mps", "xpu")
    return False


def _cuda_of(device: Any) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def _device_text(target: Any, capture: Capture) -> str:
    """`cuda` (or torch.device('cuda')) is the current device, as torch reads it for a move."""
    text = f"cuda:{target}" if isinstance(target, int) else str(target)
    return f"cuda:{capture.current_device}" if text == "cuda" else text


def _simplified(value: Any) -> Any:
    """A device_map as the checks read it: torch.device values become their text."""
    import torch

    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _simplified(v) for k, v in value.items()}
    return value


class _Patches:
    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)
        old = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)

        def undo() -> None:
            if had:
                setattr(owner, name, old)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)

        setattr(owner, name, value)
        self._undo.append(undo)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _stop(what: str) -> Callable[..., Any]:
    def stop(*args: Any, **kwargs: Any) -> Any:
        raise WeightReadStopped(f"{what}: stopped before any weight is read")

    return stop


def _patch_transformers(patches: _Patches, capture: Capture) -> None:
    import transformers

    def loader(owner_name: str, is_model: bool) -> Any:
        def from_pretrained(cls: type, checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
            dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
            load = Load(getattr(cls, "__name__", owner_name), None if checkpoint is None else str(checkpoint),
                        _simplified(kwargs.get("device_map")), "device_map" in kwargs, str(dtype) if dtype else None,
                        is_model)  # fmt: skip
            capture.loads.append(load)
            return _ModelStub(load, capture) if is_model else _Stub(load.owner)

        return classmethod(from_pretrained)

    from transformers import modeling_utils
    from transformers.models.auto import auto_factory

    patches.set(modeling_utils.PreTrainedModel, "from_pretrained", loader("PreTrainedModel", True))
    patches.set(auto_factory._BaseAutoModelClass, "from_pretrained", loader("AutoModel", True))
    from transformers.models.auto import modeling_auto

    for name, owner in list(vars(modeling_auto).items()):  # each auto class has its own copy of the method
        auto = isinstance(owner, type) and issubclass(owner, auto_factory._BaseAutoModelClass)
        if auto and name.startswith("Auto") and "from_pretrained" in vars(owner):
            patches.set(owner, "from_pretrained", loader(name, True))
    for name in ("AutoProcessor", "AutoTokenizer", "AutoConfig", "AutoImageProcessor", "AutoFeatureExtractor",
                 "AutoVideoProcessor", "PreTrainedTokenizerBase", "ProcessorMixin", "PretrainedConfig",
                 "ImageProcessingMixin", "FeatureExtractionMixin"):  # fmt: skip
        try:
            owner = getattr(transformers, name)
        except (AttributeError, ImportError):
            continue
        if isinstance(owner, type) and "from_pretrained" in dir(owner):
            patches.set(owner, "from_pretrained", loader(name, False))


def _constant(value: Any) -> Callable[[Any], Any]:
    def read(self: Any) -> Any:
        return value

    return read


def _patch_accelerate(patches: _Patches, processes: int, rank: int, capture: Capture) -> None:
    try:
        import accelerate
        from accelerate.utils import DistributedType
    except ImportError:
        return
    import torch

    distributed = DistributedType.MULTI_GPU if processes > 1 else DistributedType.NO

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if processes > 1:  # accelerate's PartialState sets the process's device current
            capture.current_device = rank

    values = {
        "process_index": rank, "local_process_index": rank, "num_processes": processes,
        "is_main_process": rank == 0, "is_local_main_process": rank == 0, "is_last_process": rank == processes - 1,
        "distributed_type": distributed, "device": torch.device(f"cuda:{rank}" if processes > 1 else "cuda"),
        "use_distributed": processes > 1, "state": _Stub("AcceleratorState"),
    }  # fmt: skip
    classes = [accelerate.Accelerator]
    with contextlib.suppress(ImportError, AttributeError):
        from accelerate.state import AcceleratorState, PartialState

        classes += [AcceleratorState, PartialState]
    for cls in classes:
        patches.set(cls, "__init__", init)
        for name, value in values.items():
            if name == "state" and cls is not accelerate.Accelerator:
                continue
            patches.set(cls, name, property(_constant(value)))
        for method in ("wait_for_everyone", "print"):
            patches.set(cls, method, lambda self, *a, **k: None)
    for method in ("prepare", "prepare_model"):
        patches.set(accelerate.Accelerator, method, lambda self, model, *a, **k: model)
    patches.set(accelerate.Accelerator, "unwrap_model", lambda self, model, *a, **k: model)


def _patch_torch(patches: _Patches, gpus: int, capture: Capture) -> None:
    import torch

    def set_device(device: Any) -> None:
        text = str(device)
        capture.current_device = (
            int(device) if isinstance(device, int) else int(text.split(":")[1]) if ":" in text else 0
        )

    patches.set(torch.cuda, "device_count", lambda: gpus)
    patches.set(torch.cuda, "is_available", lambda: gpus > 0)
    patches.set(torch.cuda, "current_device", lambda: capture.current_device)
    patches.set(torch.cuda, "set_device", set_device)
    patches.set(torch, "load", _stop("torch.load"))


def _patch_downloads(patches: _Patches) -> None:
    with contextlib.suppress(ImportError):
        import huggingface_hub

        for name in ("snapshot_download", "hf_hub_download"):
            if hasattr(huggingface_hub, name):
                patches.set(huggingface_hub, name, _stop(f"huggingface_hub.{name}"))
    with contextlib.suppress(ImportError):
        import safetensors.torch

        patches.set(safetensors.torch, "load_file", _stop("safetensors.torch.load_file"))
        patches.set(safetensors, "safe_open", _stop("safetensors.safe_open"))


@contextlib.contextmanager
def intercepted(
    *, gpus: int, processes: int = 1, rank: int = 0, env: Mapping[str, str | None] = {}
) -> Iterator[Capture]:
    """Loaders, accelerate and torch.cuda replaced as the module docstring says; `env` set (None: unset)."""
    capture = Capture()
    patches = _Patches()
    saved = {name: os.environ.get(name) for name in (*env, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        for name, value in {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _patch_transformers(patches, capture)
        _patch_accelerate(patches, processes, rank, capture)
        _patch_torch(patches, gpus, capture)
        _patch_downloads(patches)
        yield capture
    finally:
        patches.restore()
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@contextlib.contextmanager
def imported_fresh(package: str, extra_path: str | None = None) -> Iterator[None]:
    """Import `package` for this capture only: its modules are dropped from sys.modules afterwards (and
    `extra_path` from sys.path), so a later capture imports the kit as it is on disk then."""
    import importlib

    before = set(sys.modules)
    added = extra_path is not None and extra_path not in sys.path
    if added:
        sys.path.insert(0, str(extra_path))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name == package or name.startswith(package + "."):
                del sys.modules[name]
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(extra_path))
