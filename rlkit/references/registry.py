"""The reference registry: name -> :class:`ReferenceType`, the class that knows everything about one kind of
reference (its recipe fields, its driver-side set-up, what its reference worker loads, whether it may refresh).

A reference's life in a run, each step one method of its type:

1. **validate**: the recipe's ``reference:`` mapping becomes the type's :attr:`ReferenceType.Config`
   (:func:`validate_reference`, called by :class:`rlkit.regularizers.RegularizerConfig`), and
   :meth:`ReferenceType.check_use` refuses a regularizer that cannot use it;
2. **prepare**: :meth:`ReferenceType.prepare` runs once on the driver before any worker starts (a teacher is
   trained or its tokenizer checked) and returns what :meth:`~ReferenceType.source` needs later;
3. **resolve**: :meth:`ReferenceType.source` names the checkpoints a reference worker loads;
4. **load**: :meth:`ReferenceType.load_model` builds the model inside the worker from that
   :class:`ReferenceSource` (a soup averages checkpoints);
5. **refresh**: a type with :attr:`ReferenceType.refreshable` accepts ``refresh_every`` (TR-DPO), and its worker
   moves toward the policy after each due step (:mod:`rlkit.references.refresh`).

Add one: write a module with a :class:`ReferenceType` subclass (and its ``Config``), then one
``register_reference("name")(Class)`` line in :mod:`rlkit.references`. Nothing here imports the trainer, the
regularizers or the recipe: they import this.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field, field_validator, model_validator

from rlkit._config import ConfigError, StrictModel

_REGISTRY: dict[str, type[ReferenceType[Any]]] = {}


class ReferenceConfig(StrictModel):
    """Fields every reference has; a type's ``Config`` subclasses it and adds its own.

    ``type`` names a registered :class:`ReferenceType`. Reference refresh (TR-DPO, Gorbatovski et al. 2024,
    arXiv 2404.09656), for types that allow it (``initial``, ``soup``): every ``refresh_every`` optimizer steps
    ``theta_ref <- (1 - a) theta_ref + a theta_policy`` with ``a = refresh_rate`` (``a = 1``: hard update, the
    reference becomes the current policy; ``a < 1``: soft update). A refreshed reference is served under its own key
    (e.g. ``initial-refresh10-0.5``), so the ``kl_initial/k3`` diagnostic keeps measuring the distance to the true
    initial policy.
    """

    type: str = "initial"
    refresh_every: int | None = Field(None, gt=0)
    refresh_rate: float | None = Field(None, gt=0, le=1)

    @property
    def key(self) -> str:
        """The name this reference is served and looked up under (``type``, plus the refresh schedule)."""
        if self.refresh_every:
            return f"{self.type}-refresh{self.refresh_every}-{self.refresh_rate if self.refresh_rate else 1.0:g}"
        return self.type

    @field_validator("type")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in _REGISTRY:
            raise ValueError(f"unknown reference type {v!r}; registered: {', '.join(available_references())}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _foreign_keys(cls, data):
        """A key another registered type owns is refused with the type it belongs to (a plain unknown key stays
        pydantic's ``unknown key``). Empty values (None, ``[]``) are dropped: they set nothing."""
        if not isinstance(data, Mapping):
            return data
        data = {k: v for k, v in data.items() if k in cls.model_fields or v not in (None, [], {})}
        kind = data.get("type", "initial")
        for k in data:
            owners = sorted(n for n, t in _REGISTRY.items() if k not in cls.model_fields and k in t.Config.model_fields)
            if owners:
                raise ValueError(
                    f"{k!r} only applies to type{'s' if len(owners) > 1 else ''} "
                    f"{' and '.join(map(repr, owners))}, not {kind!r}"
                )
        return data

    @model_validator(mode="after")
    def _refresh(self):
        if self.refresh_rate is not None and not self.refresh_every:
            raise ValueError("'refresh_rate' needs 'refresh_every' (the number of steps between refreshes)")
        if self.refresh_every and not reference_type(self.type).refreshable:
            ok = " and ".join(repr(n) for n, t in sorted(_REGISTRY.items()) if t.refreshable)
            raise ValueError(
                f"'refresh_every' applies to types {ok} (a model with the policy's architecture), not {self.type!r}"
            )
        return self


@dataclass
class ReferenceSetup:
    """What a type's driver-side :meth:`ReferenceType.prepare` may use: the recipe, the run's output folder, the
    policy's warm starts (``init_paths[0]``: the initial policy; ``sft:<i>`` in a recipe: ``init_paths[i]``), a
    console, and ``train_sft(spec, key) -> path``, which trains an SFT model for a spec (the teacher's
    ``sft:tiny``; the trainer provides it, so this package does not import the trainer)."""

    recipe: Any
    out: Path
    init_paths: list[str]
    console: Any = None
    train_sft: Callable[[dict, str], str] | None = None


@dataclass(frozen=True)
class ReferenceSource:
    """What a reference worker loads: ``kind`` (the registered type name: the worker hands this source back to the
    type's :meth:`ReferenceType.load_model`), checkpoint ``paths``, their soup ``weights`` (None: uniform or unused)
    and any ``options`` a type's loading needs besides (plain, picklable values: they travel to the worker)."""

    kind: str
    paths: list[str]
    weights: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)


#: the config type a :class:`ReferenceType` subclass's steps receive (its ``Config``)
RefCfgT = TypeVar("RefCfgT", bound=ReferenceConfig)


class ReferenceType(Generic[RefCfgT]):
    """One kind of reference. Subclasses set ``Config`` and override the steps that differ from the defaults:
    no set-up, served from the initial policy's checkpoint, loaded as one model, no refresh.

    Generic in its config type for the checker only (``class SoupReference(ReferenceType[SoupConfig])``); a bare
    ``ReferenceType`` base means ``ReferenceType[Any]``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[ReferenceConfig]] = ReferenceConfig
    #: TR-DPO refresh allowed: the reference is a model with the policy's architecture
    refreshable: ClassVar[bool] = False
    #: computed by the learner from its own outputs (Lp-Reg's proxy): no reference worker, no checkpoint
    learner_side: ClassVar[bool] = False

    @classmethod
    def check_use(cls, cfg: RefCfgT, regularizer: str, path: str) -> None:
        """Refuse a regularizer (by registered name) that cannot use this reference: raise :class:`ConfigError`
        at ``path`` (``regularizers[i].reference``)."""

    @classmethod
    def sft_runs(cls, cfg: RefCfgT) -> int:
        """How many of the run's SFT warm starts this reference names (``sft:<i>`` needs ``i + 1``); the trainer
        trains at least one (the initial policy) whatever this says."""
        return 0

    @classmethod
    def identity(cls, cfg: RefCfgT) -> str:
        """A stable name of the spec: what :meth:`prepare`'s result is stored under."""
        return json.dumps(cfg.model_dump(), sort_keys=True, default=str)

    @classmethod
    def prepare(cls, cfg: RefCfgT, setup: ReferenceSetup, path: str) -> Any:
        """Driver-side set-up before any worker starts; the result reaches :meth:`source` (None: nothing)."""
        return None

    @classmethod
    def source(cls, cfg: RefCfgT, init_paths: list[str], prepared: Any = None) -> ReferenceSource:
        """The checkpoints a reference worker loads for this spec (default: the initial policy's)."""
        if cls.learner_side:
            raise ConfigError("regularizers.reference", f"reference type {cfg.type!r} has no model to serve")
        return ReferenceSource(cfg.type, [init_paths[0]])

    @classmethod
    def load_model(cls, source: ReferenceSource, dtype: str):
        """``(model, tokenizer)`` inside the reference worker, from what :meth:`source` named: ``paths[0]`` (a
        model directory, hub id, ``tiny``, or a LoRA adapter directory, merged into its base)."""
        from rlkit.models.lora import load_merged_model

        return load_merged_model(source.paths[0], dtype)


def register_reference(name: str):
    """Class decorator: make a :class:`ReferenceType` subclass available to recipes as ``reference.type: name``.
    Its ``Config`` must be a :class:`ReferenceConfig` subclass whose ``type`` accepts ``name``."""

    def deco(cls: type[ReferenceType]) -> type[ReferenceType]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"reference type {name!r} is already registered to {_REGISTRY[name].__name__}")
        if not issubclass(cls.Config, ReferenceConfig):
            raise TypeError(f"{cls.__name__}.Config must subclass ReferenceConfig")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_references() -> list[str]:
    """Registered reference type names."""
    return sorted(_REGISTRY)


def reference_type(name: str) -> type[ReferenceType]:
    """The registered type ``name``; :class:`ConfigError` listing the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(
            "regularizers.reference.type",
            f"unknown reference type {name!r}; registered: {', '.join(available_references())}",
        )
    return _REGISTRY[name]


def validate_reference(value: Any) -> ReferenceConfig:
    """A recipe's ``reference`` (a type name, a mapping, or a config) as its type's ``Config``. pydantic errors
    keep their key path (``checkpoints``, ``type``, ...) below the caller's ``reference``."""
    if isinstance(value, str):
        value = {"type": value}
    if isinstance(value, ReferenceConfig):
        if value.type in _REGISTRY and isinstance(value, _REGISTRY[value.type].Config):
            return value
        value = value.model_dump(exclude_unset=True) | {"type": value.type}
    if not isinstance(value, Mapping):
        return value  # pydantic's own error: not a mapping
    kind = value.get("type", "initial")
    if not isinstance(kind, str) or kind not in _REGISTRY:
        return ReferenceConfig.model_validate(value)  # raises: the type's error, at reference.type
    return _REGISTRY[kind].Config.model_validate(value)


def as_reference_config(spec: Mapping[str, Any], path: str = "regularizers.reference") -> ReferenceConfig:
    """A spec dict (``model_dump`` of a config, e.g. a learner's ``needs().references``) as its type's config;
    :class:`ConfigError` at ``path`` for an unknown type or a bad field."""
    from rlkit._config import validate_model

    kind = reference_type(spec.get("type", "initial"))
    return validate_model(kind.Config, dict(spec), path)
