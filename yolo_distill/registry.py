"""Name -> implementation registries, so a YAML recipe or a CLI key can pick an implementation by name.

Every choice a recipe can make has one registry here, in the lowest layer, so that a config can validate a name
without importing the room that implements it. Each registry names the module(s) whose import registers its
entries (``locations``, as mmengine's registries do) and imports them on first lookup.

| registry | filled by | holds |
|---|---|---|
| :data:`LOSSES` | ``yolo_distill.distill.losses`` | distillation losses (classes) |
| :data:`CONNECTORS` | ``yolo_distill.distill.connectors`` | channel connectors (factories) |
| :data:`SCHEDULES` | ``yolo_distill.distill.schedules`` | KD weight schedules (functions) |
| :data:`IMPORTANCE` | ``yolo_distill.compress.importance`` | pruning importance criteria (factories) |
| :data:`ALLOCATIONS` | ``yolo_distill.compress.allocation`` | how a pruning ratio is spread over layers |
| :data:`GRANULARITIES` | ``yolo_distill.compress.granularity`` | fine-grained pruning masks (functions) |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name or key the user gave that is not known (a recipe key, a loss name, a method...): an input error, which
    the CLI reports in one line, unlike a KeyError from a bug."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to implementations (classes or functions). Registering a name twice, or asking for an unknown one,
    raises.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"distillation loss"``).
        locations: modules whose import registers the entries; imported on the first lookup.
    """

    def __init__(self, kind: str, locations: Sequence[str] = ()) -> None:
        self.kind = kind
        self.locations = tuple(locations)
        self._items: dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.locations:
                importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered by {self._items[name]!r}")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return what is registered as ``name``."""
        self._load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(f"unknown {self.kind} {name!r}; choose one of {self.names()}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items


LOSSES: Registry = Registry("distillation loss", ["yolo_distill.distill.losses"])
CONNECTORS: Registry = Registry("connector", ["yolo_distill.distill.connectors"])
SCHEDULES: Registry = Registry("schedule kind", ["yolo_distill.distill.schedules"])
IMPORTANCE: Registry = Registry("importance criterion (method)", ["yolo_distill.compress.importance"])
ALLOCATIONS: Registry = Registry("allocation", ["yolo_distill.compress.allocation"])
GRANULARITIES: Registry = Registry("pruning granularity", ["yolo_distill.compress.granularity"])
