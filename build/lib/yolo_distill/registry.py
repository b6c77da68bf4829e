"""A tiny name -> class registry, so a YAML recipe can pick an implementation by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes. Registering a name twice, or asking for an unknown one, raises.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"distillation loss"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers the class under ``name``."""

        def deco(cls: type[T]) -> type[T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered by {self._items[name].__qualname__}")
            self._items[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name``."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._items)}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
