"""Taps: what a module inside a model takes in or gives out, recorded while the model runs (no torch import here:
the task plug-ins that subclass it are imported by the CLI)."""

from __future__ import annotations

from typing import Any

__all__ = ["ModuleTap", "first_output"]


class ModuleTap:
    """Context that records what one module of a model takes in (``pre=True``) or gives out while the model runs;
    ``seen`` holds it after a forward pass. Nothing is recorded where ``module`` is None."""

    def __init__(self, module: Any, pre: bool):
        self.module, self.pre = module, pre
        self.seen = None
        self._handle = None

    def _record(self, _module, inputs, output=None):
        self.seen = inputs if self.pre else output

    def __enter__(self):
        if self.module is not None:
            register = self.module.register_forward_pre_hook if self.pre else self.module.register_forward_hook
            self._handle = register(self._record)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def first_output(out):
    """A model's main output where it returns several (auxiliary heads, deep supervision)."""
    return out[0] if isinstance(out, tuple | list) else out
