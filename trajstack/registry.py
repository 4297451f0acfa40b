"""A registry keyed by string that refuses unknown and duplicate keys, naming the valid ones.

The one registry of the project: feature builders (`features.builders`), stage-2 learners
(`lightgbm`, ...) and blend optimisers (`lp`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from trajstack.errors import TrajstackError

T = TypeVar("T")


class RegistryError(TrajstackError, KeyError, ValueError):
    """An unknown or duplicate registry key (a bad config value); the message lists the valid keys."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind (`what` is used in messages, e.g. "feature builder")."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator: add `obj` under `key`; a key already taken is an error."""

        def add(obj: T) -> T:
            if key in self._entries:
                raise RegistryError(f"{self.what} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return add

    def get(self, key: str) -> T:
        if key not in self._entries:
            raise RegistryError(
                f"unknown {self.what} {key!r}; valid keys: {', '.join(sorted(self._entries))}"
            )
        return self._entries[key]

    def check(self, keys: list[str]) -> None:
        """Raise on the first unknown key of `keys`."""
        for key in keys:
            self.get(key)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
