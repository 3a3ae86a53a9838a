"""Name -> reward class registry.

Adding a reward is one file in this package plus one decorator line::

    @register_reward("my_reward")
    class MyReward(SampleReward):
        def __init__(self, threshold: float = 0.5): ...
        def score(self, prompt, completion, answer): ...

Every public module of the :mod:`reward_models` package is imported the first time the registry is queried, so a new
file is picked up without editing any list. Rewards defined elsewhere register when their module is imported.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

from .base import Reward

R = TypeVar("R", bound=type[Reward])

_REGISTRY: dict[str, type[Reward]] = {}
_builtins_loaded = False


class UnknownRewardError(KeyError, ValueError):
    """Raised for an unregistered reward name. Both a ``KeyError`` and a ``ValueError``; ``str()`` is readable."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_reward(name: str) -> Callable[[R], R]:
    """Class decorator: register ``cls`` under ``name`` and set ``cls.name``.

    Re-registering the same class (e.g. a module reload) is allowed; a different class under a taken name is a
    ``ValueError``. The class must subclass :class:`reward_models.base.Reward`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")

    def decorator(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Reward)):
            raise TypeError(f"@register_reward({name!r}) expects a Reward subclass, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"reward name {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    _builtins_loaded = True


def available_rewards() -> list[str]:
    """Sorted names of all registered rewards."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_reward(name: str) -> type[Reward]:
    """The reward class registered under ``name``; :class:`UnknownRewardError` listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownRewardError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}") from None


def accepted_params(cls: type[Reward]) -> list[str] | None:
    """Keyword parameters of ``cls.__init__`` (``None`` when it takes ``**kwargs`` and accepts anything)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [
        n
        for n, p in params.items()
        if n != "self" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def unknown_params(cls: type[Reward], params: Mapping[str, Any]) -> list[str]:
    """Keys of ``params`` that ``cls`` does not accept (in the given order)."""
    accepted = accepted_params(cls)
    return [] if accepted is None else [k for k in params if k not in accepted]


def build_reward(name: str, **params: Any) -> Reward:
    """Instantiate the reward ``name`` with ``params``; an unknown parameter is a ``ValueError`` naming it."""
    cls = get_reward(name)
    bad = unknown_params(cls, params)
    if bad:
        raise ValueError(
            f"reward {name!r} got unknown parameter(s) {', '.join(map(repr, bad))}; "
            f"accepted: {', '.join(accepted_params(cls) or [])}"
        )
    return cls(**params)
