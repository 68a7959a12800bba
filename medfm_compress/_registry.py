"""A registry of named plug-ins, in registration order; a name registered twice is an error (a bug, not a user's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Plug-ins by name. ``what`` names the kind of plug-in in messages (``task``, ``teacher source``);
    ``origin(item)`` says where a registered one comes from, for the duplicate-name error (default: its repr)."""

    def __init__(self, what: str, origin: Callable[[T], str] = repr):
        self.what = what
        self.origin = origin
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not name:
            raise ValueError(f"a {self.what} needs a name: {item!r}")
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered by {self.origin(self._items[name])}")
        self._items[name] = item
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())
