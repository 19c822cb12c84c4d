"""Run a tiny twin with the eval's device map: dispatch it as from_pretrained does, then forward and generate.

The same code runs on real GPUs and in simulation; simulation only wraps it in virtual CUDA devices, so every
tensor carries the device it would have on the node and a cross-device op raises torch's own error.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from diag.noise import captured_warnings
from diag.samedevice.repeats import Repeats, pass_through_repeats
from diag.twins import ModelSpec, build_tiny, example_input_sets
from diag.twins.families import family_named

SAME_DEVICE = "Expected all tensors to be on the same device"
# Two wordings in torch 2.8+: elementwise ops say "found at least two devices, A and B!"; mm/bmm/addmm/
# index_select/embedding say "but got mat2 is on B, different from other tensors on A" (pytorch PR #155085).
_DEVICES = re.compile(r"found at least two devices, (\S+) and (\S+?)!")
_DEVICES_NEW = re.compile(r"but got \w+ is on (\S+?), different from other tensors on (\S+?)[ ,.(]")


@dataclass(frozen=True)
class RunResult:
    """How far the twin got: `stage` is where it failed (None when every stage passed)."""

    stage: str | None
    error: str | None = None
    devices: tuple[str, str] | None = None
    op: str | None = None
    module: str | None = None
    seconds: float = 0.0
    # Wall time of each part that ran: build, dispatch, and forward + generate ("run").
    parts: tuple[tuple[str, float], ...] = ()
    inputs_device: str = "cuda:0"  # where the run put the inputs, as the eval kits do
    # Blocks passed through as repeats of their neighbours (diag/samedevice/repeats.py); 0 with every_block.
    repeats_skipped: int = 0

    @property
    def ok(self) -> bool:
        return self.stage is None

    @property
    def step(self) -> str | None:
        """The stage without the input set it ran on: "generate" for "generate (video)"."""
        return None if self.stage is None else self.stage.partition(" (")[0]

    @property
    def input_set(self) -> str | None:
        """The input set the failed stage ran on ("video"), when the family has several; else None."""
        if self.stage is None or " (" not in self.stage:
            return None
        return self.stage.partition(" (")[2].rstrip(")")

    @property
    def cross_device(self) -> bool:
        return bool(self.error and SAME_DEVICE in self.error)


def dispatch(model: torch.nn.Module, device_map: Mapping[str, Any], virtual: Any = None) -> None:
    """Place the twin as from_pretrained(device_map=…) does: the installed transformers' dispatch where it has
    one (5.x `accelerate_dispatch`), else accelerate's `dispatch_model` with the model's skip keys (4.x).

    accelerate's warnings about diag's own placement (a map key naming a parameter, as CogVLM's `boi`) are
    captured: the map checks say what matters about the user's map in diag's words (MAP-005)."""
    with captured_warnings():
        _dispatch(model, device_map, virtual)


def _dispatch(model: torch.nn.Module, device_map: Mapping[str, Any], virtual: Any = None) -> None:
    tie_weights = getattr(model, "tie_weights", None)
    if tie_weights is not None:
        tie_weights()
    placed = {k: ("cpu" if v == "disk" else v) for k, v in device_map.items()}  # the twin has no disk folder
    _load_like_from_pretrained(model, placed, virtual)
    try:
        from transformers.integrations.accelerate import accelerate_dispatch
    except ImportError:
        import inspect

        from accelerate import dispatch_model

        kwargs: dict[str, Any] = {"device_map": placed, "offload_dir": None, "offload_index": None,
                                  "offload_buffers": False}  # fmt: skip
        if "skip_keys" in inspect.signature(dispatch_model).parameters:
            kwargs["skip_keys"] = getattr(model, "_skip_keys_device_placement", None)
        dispatch_model(model, **kwargs)
        return
    accelerate_dispatch(model, None, placed, None, None, False)  # type: ignore[no-untyped-call]


def _load_like_from_pretrained(model: torch.nn.Module, device_map: Mapping[str, Any], virtual: Any = None) -> None:
    """Put each checkpoint tensor where loading puts it: the device of the longest map key that prefixes its name.

    from_pretrained loads every state-dict entry (parameters and persistent buffers) onto its mapped device;
    non-persistent buffers (a rotary `inv_freq`) are not in the checkpoint and stay on the CPU unless the map
    names their module. dispatch_model then places whole modules (its hooks move what is not yet there), so on
    real GPUs only entries whose key is not a module (a parameter such as CogVLM's `model.vision.boi`) need
    placing here; an entry with no key is the error transformers raises while loading. On virtual devices every
    entry is placed here, without a copy (`VirtualCuda.place`), as loading would have put it.
    """
    from accelerate.utils import set_module_tensor_to_device

    from diag.samedevice.causes import owner_key

    modules = {name for name, _ in model.named_modules()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = owner_key(name, device_map)
        if key is None:
            raise ValueError(f"{name} doesn't have any device set.")  # transformers' own words when loading
        if virtual is not None and virtual.place(tensor, device_map[key]):
            continue
        if key not in modules:
            set_module_tensor_to_device(model, name, device_map[key])


def _to(inputs: Mapping[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def run_stages(spec: ModelSpec, model: torch.nn.Module, inputs_device: str = "cuda:0") -> Iterator[str]:
    """Run the twin as the kits call it, on every input set its family gives, yielding each stage's name before
    running it: the family's stages (forward, then a two-token greedy generate; a remote-code `chat` for families
    driven through it), named with the input set when there are several ("generate (video)").

    Inputs go where the eval kits put them: `.cuda()` / `cuda:0` (lmms-eval's `self.device`).
    """
    family = family_named(spec.family)
    sets = example_input_sets(spec, model)
    with torch.no_grad():
        for name, inputs in sets.items():
            for stage in family.run(model, _to(inputs, inputs_device)):
                yield f"{stage} ({name})" if len(sets) > 1 else stage


@contextlib.contextmanager
def _devices(simulated_gpus: int | None, model: torch.nn.Module) -> Iterator[Any]:
    if simulated_gpus is None:
        yield None
        return
    from diag.virtual import VirtualCuda

    with VirtualCuda(simulated_gpus, model=model) as virtual:
        yield virtual


def run_twin(
    spec: ModelSpec,
    device_map: Mapping[str, Any],
    *,
    simulated_gpus: int | None,
    seed: int = 0,
    inputs_device: str = "cuda:0",
    every_block: bool = False,
) -> RunResult:
    """Build the tiny twin, dispatch it with the map and run it; a device error is a result, not an exception.

    `simulated_gpus` is the number of virtual GPUs (None: the process's real GPUs). Blocks that repeat their
    neighbours exactly pass their input through (diag/samedevice/repeats.py) unless `every_block`.
    """
    start = time.perf_counter()
    with _one_thread(), _collector_spared():
        try:
            model = build_tiny(spec, seed=seed)
        except Exception as exc:  # a config the twin classes cannot take is a finding (FWD-008)
            return RunResult("build", f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        return _run(spec, model, device_map, simulated_gpus, inputs_device, start, every_block)


@contextlib.contextmanager
def _collector_spared() -> Iterator[None]:
    """Keep Python's cyclic collector off the objects that existed before the run (torch's and transformers'
    hundreds of thousands): building and running a twin makes many small objects, and every full collection would
    walk all the old ones again (measured: a fifth of the 94-layer Qwen3-VL-MoE twin's run). New objects are
    still collected; the old ones return to the collector afterwards. A process that froze objects itself is
    left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the twin's CPU work on one thread. Its tensors are tiny, so more threads only cost: between two
    ops the mode's Python runs while OpenMP workers spin, and on a busy node each op then waits for a worker
    the OS has parked (measured on two busy cores: the internvl2-8b twin's forward + generate over 4 virtual GPUs
    took 0.30-0.47 s with one thread, 2.8-3.5 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(
    spec: ModelSpec,
    model: torch.nn.Module,
    device_map: Mapping[str, Any],
    simulated_gpus: int | None,
    inputs_device: str,
    start: float,
    every_block: bool = False,
) -> RunResult:
    stage = "dispatch"
    marks = [("", start), ("build", time.perf_counter())]  # (part, when it ended)
    repeats = Repeats()
    with _devices(simulated_gpus, model) as virtual:
        try:
            dispatch(model, device_map, virtual)
            marks.append(("dispatch", time.perf_counter()))
            if not every_block:
                repeats = pass_through_repeats(model, device_map)
            for stage in run_stages(spec, model, inputs_device):  # noqa: B007 (the stage reached is reported)
                pass
        except RuntimeError as exc:
            return replace(_failure(stage, exc, virtual, time.perf_counter() - start, _parts(marks), inputs_device),
                           repeats_skipped=repeats.passed_through)  # fmt: skip
        except Exception as exc:  # a twin the map cannot run (meta tensors left …), or code that fails here at all
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return RunResult(stage, f"{type(exc).__name__}: {text}", seconds=time.perf_counter() - start,
                             parts=_parts(marks), inputs_device=inputs_device,
                             repeats_skipped=repeats.passed_through)  # fmt: skip
        finally:
            repeats.undo()
    marks.append(("run", time.perf_counter()))
    return RunResult(None, seconds=time.perf_counter() - start, parts=_parts(marks),
                     repeats_skipped=repeats.passed_through)  # fmt: skip


def _parts(marks: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Each part's name and how long it took: from the end of the part before it to its own end."""
    return tuple((name, end - before) for (_, before), (name, end) in itertools.pairwise(marks))


def _failure(
    stage: str,
    exc: RuntimeError,
    virtual: Any,
    seconds: float,
    parts: tuple[tuple[str, float], ...],
    inputs_device: str = "cuda:0",
) -> RunResult:
    text = str(exc).strip().splitlines()[0]
    match = _DEVICES.search(text)
    newer = _DEVICES_NEW.search(text)
    devices = (match[1], match[2]) if match else (newer[2], newer[1]) if newer else None
    cross = getattr(virtual, "last_error", None) if virtual is not None else None
    return RunResult(
        stage,
        f"RuntimeError: {text}",
        devices=devices,
        op=getattr(cross, "op", None),
        module=getattr(cross, "module", None),
        seconds=seconds,
        parts=parts,
        inputs_device=inputs_device,
    )
