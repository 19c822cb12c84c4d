"""Repeated blocks pass their input through (diag/samedevice/repeats.py): which blocks still run, and that the
verdicts of real twins do not change."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from diag.samedevice.repeats import pass_through_repeats
from diag.samedevice.run import run_twin
from diag.samedevice.verify import forced_map
from diag.twins import PRESETS, build_meta
from diag.twins.families import family_named


class Block(nn.Module):
    def __init__(self, width: int, sliding: bool = False, grow: int = 0) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width + grow)
        self.is_sliding = sliding
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, str]:
        self.calls += 1
        return self.fc(hidden_states) * scale, "cache"


class Stack(nn.Module):
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden, cache = layer(hidden_states=hidden)
            assert cache == "cache"  # the output keeps the form the block gives
        return hidden


def _ran(model: Stack, device_map: dict[str, Any], width: int = 4) -> list[int]:
    repeats = pass_through_repeats(model, device_map)
    try:
        model(torch.ones(1, width))
    finally:
        repeats.undo()
    return [index for index, block in enumerate(model.layers) if block.calls]


def test_one_block_of_each_kind_runs_on_each_device():
    model = Stack([Block(4) for _ in range(6)])
    assert _ran(model, {"": 0}) == [0]
    model = Stack([Block(4) for _ in range(6)])
    halves = {f"layers.{i}": i // 3 for i in range(6)}
    assert _ran(model, halves) == [0, 3]


class Doubling(Stack):
    """Calls each block on a hidden state of another shape: a block passed through cannot borrow the output of
    the block before (a shape it did not give), so it runs."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden, _ = layer(hidden_states=hidden)
            hidden = torch.cat([hidden, hidden])
        return hidden


def test_a_block_whose_input_shape_differs_from_the_template_runs():
    model = Doubling([Block(4) for _ in range(3)])
    repeats = pass_through_repeats(model, {"": 0})
    model(torch.ones(1, 4))
    assert [block.calls for block in model.layers] == [1, 1, 1]
    assert repeats.passed_through == 0 and repeats.runs[0].fallbacks == 2


def test_undo_restores_every_block():
    model = Stack([Block(4) for _ in range(4)])
    repeats = pass_through_repeats(model, {"": 0})
    assert repeats.skipped == ["layers.1", "layers.2", "layers.3"]
    repeats.undo()
    model(torch.ones(1, 4))
    assert [block.calls for block in model.layers] == [1, 1, 1, 1]
    assert all("forward" not in vars(block) for block in model.layers)


def test_a_model_without_no_split_classes_runs_every_block():
    model = Stack([Block(4) for _ in range(4)])
    model._no_split_modules = []  # type: ignore[misc]
    assert _ran(model, {"": 0}) == [0, 1, 2, 3]


def _verdict(name: str, device_map: dict[str, Any], gpus: int, every_block: bool) -> tuple[Any, ...]:
    result = run_twin(PRESETS[name], device_map, simulated_gpus=gpus, every_block=every_block)
    return result.stage, result.op, result.devices, result.module, result.error, result.repeats_skipped > 0


def _available(name: str) -> None:
    reason = family_named(PRESETS[name].family).unavailable(PRESETS[name].config)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("name", ["llava-1.5-7b", "internvl2-8b", "qwen2.5-vl-7b", "gemma-3-4b"])
def test_the_verdict_on_a_forced_map_is_the_same_with_every_block(name):
    _available(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device_map = forced_map(build_meta(PRESETS[name]), 4, PRESETS[name].family)
        full = _verdict(name, device_map, 4, every_block=True)
        fast = _verdict(name, device_map, 4, every_block=False)
    assert full[:5] == fast[:5]
    assert full[5] is False and fast[5] is True  # the fast run did pass blocks through


def test_a_broken_middle_layer_fails_the_same_with_every_block():
    """A map that puts one sub-module of a middle decoder layer on another GPU: that layer is of its own kind, so
    it runs, and the verdict (op, devices, module) is the one the full run gives."""
    name = "llava-1.5-7b"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = build_meta(PRESETS[name])
        device_map = dict(forced_map(meta, 2, PRESETS[name].family))
        layers = sorted(k for k in device_map if ".layers." in k and k.count(".") == 3)
        middle = layers[len(layers) // 2]
        device_map[f"{middle}.mlp.down_proj"] = 1 - int(device_map[middle])
        full = _verdict(name, device_map, 2, every_block=True)
        fast = _verdict(name, device_map, 2, every_block=False)
    assert full[0] is not None and full[:5] == fast[:5]
    assert full[3] is not None and middle in full[3]
