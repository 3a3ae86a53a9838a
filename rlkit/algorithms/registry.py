"""Name -> component registries for the algorithm axes: advantage estimators and policy losses.

A new estimator or loss is one module with a decorated class (``@ADVANTAGES.register("name")``) plus one import line
in :mod:`rlkit.algorithms` (built-ins) or one entry in the recipe's ``plugins`` list (your own module). The recipe
names it (``grpo.advantage: name``, ``grpo.policy_loss: name``); an unknown name is a :class:`ConfigError` that
lists the registered ones."""

from __future__ import annotations

from typing import ClassVar, Generic, Protocol, TypeVar

from rlkit._config import ConfigError


class _Named(Protocol):
    """What a registered class has: the ``name`` class attribute :meth:`Registry.register` sets."""

    name: ClassVar[str]


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """A named set of component classes; ``what`` names the kind in errors, ``key`` the recipe key that selects."""

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key
        self._items: dict[str, type[T]] = {}

    def register(self, name: str):
        """Class decorator: make ``cls`` selectable as ``name`` (a second class under one name is refused)."""

        def deco(cls: type[T]) -> type[T]:
            old = self._items.get(name)
            if old is not None and old is not cls and _origin(old) != _origin(cls):
                raise ValueError(f"{self.what} {name!r} is already registered to {self._items[name].__name__}")
            cls.name = name
            self._items[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str, key: str | None = None) -> type[T]:
        if name not in self._items:
            raise ConfigError(
                key or self.key,
                f"unknown {self.what} {name!r}; registered: {', '.join(self.names())} "
                "(a module of your own joins through the recipe's 'plugins' list)",
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items


def _origin(cls) -> tuple[str, str]:
    """A class's module and qualified name: the same plugin imported again may re-register its class."""
    return cls.__module__, cls.__qualname__


ADVANTAGES: Registry = Registry("advantage estimator", "grpo.advantage")
POLICY_LOSSES: Registry = Registry("policy loss", "grpo.policy_loss")
