"""A registry of named plug-ins, in registration order; a name registered twice is an error (a bug, not a user's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Plug-ins by name. ``what`` names the kind of plug-in in messages (``task``, ``teacher source``)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not name:
            raise ValueError(f"a {self.what} needs a name: {item!r}")
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = item
        return item

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())
