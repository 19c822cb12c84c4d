"""Repeated blocks: the decoder layers (or vision blocks) that cannot fail where their neighbours pass.

A deep twin runs every op of every layer, so an 80- or 94-layer model over 8 GPUs spends most of its run in layers
that repeat their neighbours exactly. A block of a no-split class (the installed class's `_no_split_modules`, the
unit accelerate and transformers keep on one device) runs behind its own device hook: the hook moves every tensor
argument to the block's device, and the block's own tensors sit where the map put them. So whether a block raises a
device error depends on its code, its attributes, where its tensors are and the kinds of its inputs, not on its
place in the stack. Inside a maximal run of consecutive blocks of one ModuleList that agree on all of that (the
same classes at the same paths, the same plain attributes but the layer index, the same tensor shapes, dtypes and
mapped devices), diag runs the first and the last block and passes the hidden state through the ones between,
keeping the output's form (tuple, cache entry) from the block before. The blocks at every device boundary, every
block whose kind differs (sliding or full attention, MoE or dense, cross-attention, NoPE) and every block a map
splits still run. The model's own loop code between the blocks (deepstack merges, per-layer masks) runs for every
layer.

A pass-through needs an output whose hidden state has the input's shape; where the block before changed the shape
(a down-sampling stage) the block runs. `repeats_skipped` says how many blocks a run passed through.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diag.twins.layout import no_split_modules

_PLAIN = (bool, int, float, str, type(None))
_INDEX_WORDS = ("layer_idx", "layer_id", "layer_number", "layer_num", "block_idx", "index", "idx")


def _plain_attributes(module: nn.Module) -> tuple[tuple[str, Any], ...]:
    """The module's own plain attributes (flags, sizes, kinds), without those that only number the layer."""
    return tuple(
        sorted(
            (key, value)
            for key, value in vars(module).items()
            if not key.startswith("_") and isinstance(value, _PLAIN) and not any(w in key for w in _INDEX_WORDS)
        )
    )


def _signature(block: nn.Module, prefix: str, device_map: Mapping[str, Any]) -> tuple[Any, ...]:
    """What decides whether the block can raise a device error, as a comparable value."""
    from diag.samedevice.causes import owner_device  # causes imports run, which imports this module

    modules = tuple(
        (name, type(module).__qualname__, _plain_attributes(module)) for name, module in block.named_modules()
    )
    tensors = tuple(
        (name, tuple(tensor.shape), tensor.dtype, str(owner_device(f"{prefix}.{name}", device_map)))
        for name, tensor in itertools.chain(block.named_parameters(), block.named_buffers())
    )
    return modules, tensors


@dataclass
class _Run:
    """One maximal run of equal blocks: the form of the last output its first block gave, and its input shape."""

    template: Any = None
    shape: tuple[int, ...] | None = None
    skipped: int = 0
    fallbacks: int = 0


@dataclass
class Repeats:
    """The blocks a run passes through, and how to undo it."""

    skipped: list[str] = field(default_factory=list)
    _restore: list[Callable[[], None]] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)

    @property
    def passed_through(self) -> int:
        """Blocks that really were passed through (a block falls back to running when no template fits)."""
        return sum(run.skipped for run in self.runs)

    def undo(self) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()


def _hidden(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    value = kwargs.get("hidden_states", args[0] if args else None)
    return value if isinstance(value, torch.Tensor) else None


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _with_hidden(template: Any, hidden: torch.Tensor) -> Any:
    if isinstance(template, torch.Tensor):
        return hidden
    return (hidden, *template[1:])


def _forward_slot(block: nn.Module) -> str:
    """The attribute holding the block's own forward: accelerate's hook keeps the original in `_old_forward`."""
    return "_old_forward" if hasattr(block, "_hf_hook") and hasattr(block, "_old_forward") else "forward"


def _recording(block: nn.Module, run: _Run) -> Callable[[], None]:
    slot = _forward_slot(block)
    original = getattr(block, slot)

    def forward(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        hidden, first = _hidden(args, kwargs), _first_tensor(output)
        fits = hidden is not None and first is not None and tuple(hidden.shape) == tuple(first.shape)
        run.template, run.shape = (output, tuple(first.shape)) if fits and first is not None else (None, None)
        return output

    setattr(block, slot, forward)
    return lambda: setattr(block, slot, original) if slot == "_old_forward" else block.__dict__.pop("forward", None)


def _passing(block: nn.Module, run: _Run) -> Callable[[], None]:
    slot = _forward_slot(block)
    original = getattr(block, slot)

    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden(args, kwargs)
        if run.template is None or hidden is None or tuple(hidden.shape) != run.shape:
            run.fallbacks += 1
            return original(*args, **kwargs)
        run.skipped += 1
        return _with_hidden(run.template, hidden)

    setattr(block, slot, forward)
    return lambda: setattr(block, slot, original) if slot == "_old_forward" else block.__dict__.pop("forward", None)


def pass_through_repeats(model: nn.Module, device_map: Mapping[str, Any]) -> Repeats:
    """Make every no-split block of a ModuleList whose signature an earlier block of that list has pass its input
    through (see the module's docstring); the first block of each signature runs, recording the output form."""
    repeats = Repeats()
    classes = set(no_split_modules(model))
    if not classes:
        return repeats
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.ModuleList) or len(container) < 2:
            continue
        blocks = list(container)
        if any(type(block).__name__ not in classes for block in blocks):
            continue
        first: dict[tuple[Any, ...], _Run] = {}
        for index, block in enumerate(blocks):
            signature = _signature(block, f"{prefix}.{index}" if prefix else str(index), device_map)
            run = first.get(signature)
            if run is None:
                first[signature] = run = _Run()
                repeats.runs.append(run)
                repeats._restore.append(_recording(block, run))
            else:
                repeats._restore.append(_passing(block, run))
                repeats.skipped.append(f"{prefix}.{index}")
    return repeats
