"""In-process placement (``ray.mode: inprocess``): every worker role lives in the driver process, no Ray.

The driver talks to its workers through actor handles: ``handle.method.remote(...)`` returns a future and
``get(future)`` its value. :class:`LocalActor` gives an ordinary instance of a worker class that same surface, so one
driver (``rlkit.trainer.grpo``) runs both placements:

* ``actors`` (default): each role (rollout, learner, reference, reward) is a Ray actor in its own process; policy
  weights travel from the learner to the rollout workers through the object store after every step.
* ``inprocess``: the same classes, instantiated here. The rollout engine generates with the learner's own
  ``nn.Module`` (one copy of the policy, nothing to synchronise), the way verl's hybrid engine colocates actor and
  rollout. With ``async_rollout`` the engine keeps its own copy instead and generates the next batch in a thread
  while the learner trains (torch ops release the GIL), its weights updated in place after each step. One process, so no
  Ray services and no per-actor copy of torch: the memory of a single-process trainer such as TRL's, for single-machine
  jobs. A call runs when ``.remote`` is made; the future holds its value or its exception, which ``get`` raises.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


class LocalRef:
    """A finished in-process call: its value, or the exception it raised (re-raised by :func:`get`)."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error


class _Method:
    __slots__ = ("fn", "lock")

    def __init__(self, fn, lock):
        self.fn, self.lock = fn, lock

    def remote(self, *args, **kwargs) -> LocalRef:
        # as with Ray: futures passed as arguments are resolved, and one actor runs one call at a time (a rollout
        # thread's generate and the driver's weight update never overlap)
        args = tuple(get(a) if isinstance(a, LocalRef) else a for a in args)
        kwargs = {k: get(v) if isinstance(v, LocalRef) else v for k, v in kwargs.items()}
        with self.lock:
            try:
                return LocalRef(self.fn(*args, **kwargs))
            except Exception as err:  # noqa: BLE001 - handed to the caller by get(), as Ray does
                return LocalRef(error=err)


class LocalActor:
    """An instance of a Ray actor class, living in this process and called like a Ray actor handle."""

    def __init__(self, instance):
        self.instance = instance
        self._lock = threading.RLock()

    def __getattr__(self, name: str):
        attr = getattr(self.instance, name)
        return _Method(attr, self._lock) if callable(attr) else attr

    def __repr__(self) -> str:
        return f"LocalActor({type(self.instance).__name__})"


def get(ref):
    """``ray.get`` for Ray object refs and :class:`LocalRef` futures alike (lists too)."""
    if isinstance(ref, LocalRef):
        if ref.error is not None:
            raise ref.error
        return ref.value
    if isinstance(ref, list) and ref and all(isinstance(r, LocalRef) for r in ref):
        return [get(r) for r in ref]
    import ray

    return ray.get(ref)


def actor_class(remote_cls):
    """The plain Python class behind a ``@ray.remote`` class (itself when it is not one)."""
    return getattr(remote_cls, "__ray_actor_class__", remote_cls)


def spawn(remote_cls, options: dict, *args, inprocess: bool = False, **kwargs):
    """``remote_cls.options(**options).remote(*args, **kwargs)``, or with ``inprocess`` an instance here."""
    if inprocess:
        return LocalActor(actor_class(remote_cls)(*args, **kwargs))
    return remote_cls.options(**options).remote(*args, **kwargs)


def is_local(handle) -> bool:
    return isinstance(handle, LocalActor)


class _LazyActorClass:
    """``ray.remote(cls)``, made on first use: importing a worker module does not import Ray (``inprocess`` runs
    never load it). ``options``/``remote`` and every other attribute go to the Ray actor class."""

    def __init__(self, cls):
        self.__ray_actor_class__ = cls
        self.__name__, self.__doc__ = cls.__name__, cls.__doc__
        self._remote = None

    def _ray_class(self):
        if self._remote is None:
            import ray

            self._remote = ray.remote(self.__ray_actor_class__)
        return self._remote

    def options(self, **kwargs):
        return self._ray_class().options(**with_plugins(kwargs))

    def remote(self, *args, **kwargs):
        return self.options().remote(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._ray_class(), name)

    def __repr__(self) -> str:
        return f"ActorClass({self.__name__})"


def with_plugins(options: dict) -> dict:
    """Actor options that carry the recipe's plugins (:mod:`rlkit.plugins`) into the actor's process, whenever and
    however Ray was started; unchanged when there are none."""
    import os

    from rlkit.plugins import ENV

    if not os.environ.get(ENV):
        return options
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), ENV: os.environ[ENV]}
    return {**options, "runtime_env": runtime_env}


def remote_actor(cls: type) -> _LazyActorClass:
    """Class decorator: ``cls`` as a Ray actor class, created lazily (see :class:`_LazyActorClass`)."""
    return _LazyActorClass(cls)


class _NeverRaised(Exception):
    """Stands for Ray's exception classes when Ray was never imported: nothing can raise them then."""


def ray_error(name: str = "RayActorError") -> type[BaseException]:
    """``ray.exceptions.<name>`` for ``except`` clauses, without importing Ray when no Ray call was ever made."""
    ray = sys.modules.get("ray")
    return getattr(ray.exceptions, name) if ray is not None and hasattr(ray, "exceptions") else _NeverRaised
