"""The registry of model kinds (the ``KIND:`` of a model spec): how each kind's specs are checked and built.
:mod:`.factory` registers ``timm``, ``smp`` and ``python``; :mod:`.monai_nets` registers ``monai``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelKind", "register_model_kind", "model_kinds", "get_kind", "is_dense_kind"]


@dataclass(frozen=True)
class ModelKind:
    """How specs of one kind are checked and built. ``build(name, num_classes, in_chans, img_size, **kwargs)`` gets
    the spec without its ``KIND:`` prefix; ``check(name)`` refuses a bad one without building; ``dense`` kinds
    output a map per class (``(N, K, *spatial)``) rather than a vector per image."""

    name: str
    build: Callable[..., Any]
    check: Callable[[str], None] | None = None
    dense: bool = False
    example: str = ""


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(kind: ModelKind) -> None:
    """Add (or replace) a model kind."""
    _KINDS[kind.name] = kind


def model_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def get_kind(kind: str) -> ModelKind | None:
    """The registered kind ``kind``, or None."""
    return _KINDS.get(kind)


def is_dense_kind(kind: str) -> bool:
    return kind in _KINDS and _KINDS[kind].dense
