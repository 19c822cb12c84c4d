"""Which nn.Module's forward is running, by its dotted name in the model (`model.layers.3.self_attn`).

Global forward hooks keep a stack of running modules. The post hook is registered with `always_call=True`, so
it also runs when a forward raises and the stack cannot keep a module whose forward has ended.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn
from torch.nn.modules import module as nn_module
from torch.utils.hooks import RemovableHandle


class ModuleStack:
    """Dotted names of tracked models' modules, and the stack of forwards now running."""

    def __init__(self) -> None:
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._stack: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []

    def track(self, model: nn.Module, prefix: str = "") -> None:
        """Learn the dotted names of `model`'s modules; a module reachable twice keeps its first name."""
        for name, module in model.named_modules(prefix=prefix):
            self._names.setdefault(module, name)

    def install(self) -> None:
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post, always_call=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack.clear()

    def clear(self) -> None:
        self._stack.clear()
        self._names = weakref.WeakKeyDictionary()

    def current(self) -> str | None:
        """The dotted name of the innermost running module that has one; "" is a tracked root model itself."""
        for module in reversed(self._stack):
            name = self._names.get(module)
            if name is not None:
                return name
        return None

    def _pre(self, module: nn.Module, args: Any) -> None:
        if not self._stack and module not in self._names:
            self.track(module)  # the outermost module called is the model, unless track() said otherwise
        self._stack.append(module)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth] is module:
                del self._stack[depth:]
                return
