"""The weighting registry: name -> :class:`Weighting`, the class that turns a regularizer's ``coef`` into the
coefficient of each step and, optionally, per-sample weights.

A weighting is two classes: its recipe fields (a :class:`WeightingConfig` subclass whose ``type`` is the
registered name, a ``Literal``) and its behaviour (a :class:`Weighting` subclass with ``Config`` set, overriding
:meth:`~Weighting.coef`, :meth:`~Weighting.weights` and, if it has state, :meth:`~Weighting.observe` and the
state-dict pair). Add one: write a module with both, then one ``register_weighting("name")(Class)`` line in
:mod:`rlkit.regularizers.weightings`. The recipe's ``weighting`` is validated against whatever is registered when it
is read (:func:`validate_weighting`), so a weighting registered later is accepted too.

Every weighting also takes ``only_incorrect`` (KDRL's reward-guided masking, arXiv 2506.02208): the per-sample
weight is multiplied by 1 for incorrect responses and 0 for correct ones. It is a field of every weighting rather
than a weighting of its own because a regularizer has one ``weighting`` and KDRL combines the mask with an annealed
coefficient (``{type: linear, end: 0.001, total_steps: N, only_incorrect: true}``). It needs the per-sample
``correct`` flags in ``PolicyBatch.extras["correct"]`` (the GRPO learner puts them there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import field_validator

from rlkit._config import StrictModel
from rlkit.weights import incorrect_mask

_REGISTRY: dict[str, type[Weighting]] = {}


class WeightingConfig(StrictModel):
    """Fields every weighting has; a weighting's config subclasses it with ``type: Literal["<name>"]``."""

    type: str
    #: KDRL's reward-guided masking: weight 0 on correct responses, 1 on incorrect ones (times any other weight)
    only_incorrect: bool = False

    @field_validator("type")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in _REGISTRY:
            raise ValueError(f"unknown weighting {v!r}; registered: {', '.join(available_weightings())}")
        return v


class Weighting:
    """Runtime weighting: a scalar coefficient per step and optional per-sample weights. The base is the constant
    weighting's behaviour: ``coef`` every step, no per-sample weights, no state."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[WeightingConfig]] = WeightingConfig
    #: its per-sample weights read advantages/accuracy, which are computed from the rewards: the regularizer must
    #: sit in the loss, and cannot weight rehearsal responses (which have neither)
    needs_rewards: ClassVar[bool] = False

    def __init__(self, cfg: WeightingConfig, coef: float):
        self.cfg, self.base = cfg, float(coef)

    def coef(self, step: int) -> float:
        """The coefficient at optimizer step ``step``."""
        return self.base

    def weights(self, batch) -> torch.Tensor | None:
        """This weighting's own per-sample weights ``[B]`` (None: all 1)."""
        return None

    def sample_weights(self, batch) -> torch.Tensor | None:
        """Per-sample weights ``[B]`` (None: all 1): :meth:`weights`, times KDRL's incorrect-only mask."""
        w = self.weights(batch)
        if self.cfg.only_incorrect:
            correct = batch.extras.get("correct")
            if correct is None:
                raise ValueError(
                    "weighting.only_incorrect needs the per-sample correctness flags in "
                    "batch.extras['correct'] (the GRPO learner sets them), which are missing"
                )
            mask = incorrect_mask(torch.as_tensor(correct))
            w = mask if w is None else w * mask
        return w

    def observe(self, value: float, n_steps: int = 1) -> None:
        """The step's measured divergence (an adaptive coefficient follows it); nothing by default."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (nothing by default)."""


def register_weighting(name: str):
    """Class decorator: make a :class:`Weighting` subclass available to recipes as ``weighting.type: name``. One
    class may be registered under several names when its config's ``type`` accepts them all (linear, cosine)."""

    def deco(cls: type[Weighting]) -> type[Weighting]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"weighting {name!r} is already registered to {_REGISTRY[name].__name__}")
        if not issubclass(cls.Config, WeightingConfig):
            raise TypeError(f"{cls.__name__}.Config must subclass WeightingConfig")
        cls.name = cls.name or name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_weightings() -> list[str]:
    """Registered weighting names."""
    return sorted(_REGISTRY)


def weighting_class(name: str) -> type[Weighting]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown weighting {name!r}; registered: {', '.join(available_weightings())}")
    return _REGISTRY[name]


def coerce_weighting(value):
    """Accept ``"dads"`` as shorthand for ``{type: dads}``."""
    return {"type": value} if isinstance(value, str) else value


def validate_weighting(value: Any) -> WeightingConfig:
    """A recipe's ``weighting`` (a name, a mapping, or a config) as its registered class's ``Config``; pydantic
    errors keep their key path (``target``, ``type``, ...) below the caller's ``weighting``."""
    value = coerce_weighting(value)
    if isinstance(value, WeightingConfig):
        if value.type in _REGISTRY and isinstance(value, _REGISTRY[value.type].Config):
            return value
        value = value.model_dump()
    if not isinstance(value, Mapping):
        return value  # pydantic's own error: not a mapping
    kind = value.get("type")
    if isinstance(kind, str) and kind not in _REGISTRY:  # at ``weighting``, as the one-word form is written there
        raise ValueError(f"unknown weighting {kind!r}; registered: {', '.join(available_weightings())}")
    if not isinstance(kind, str):
        return WeightingConfig.model_validate(value)  # raises: missing type, at weighting.type
    return _REGISTRY[kind].Config.model_validate(value)


def build_weighting(cfg: WeightingConfig, coef: float) -> Weighting:
    """The runtime weighting of a validated config, starting from the regularizer's ``coef``."""
    return weighting_class(cfg.type)(cfg, coef)
