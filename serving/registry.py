"""Name -> object registries (datasets, judges, engines) with a "did you mean" error, as lm-eval-harness does."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from serving.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" Did you mean '{original}'?"


class Registry(Generic[T]):
    """A small named registry; `kind` is the word used in error messages ("dataset", "judge", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`, or use as a decorator: `@REG.register("name")`."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(o: T) -> T:
            self._add(name, o)
            return o

        return decorator

    def _add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            pass
        lowered = {k.lower(): v for k, v in self._items.items()}
        if name.lower() in lowered:
            return lowered[name.lower()]
        known = ", ".join(sorted(self._items))
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'.{did_you_mean(name, list(self._items))} Known {self.kind}s: {known}."
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items or name.lower() in {k.lower() for k in self._items}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
