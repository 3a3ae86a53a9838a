"""``CompositeReward``: a weighted sum of registered rewards with a per-component breakdown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .base import Reward, check_batch
from .registry import UnknownRewardError, accepted_params, available_rewards, get_reward, unknown_params

SPEC_KEYS = ("name", "weight", "params", "key")


@dataclass(frozen=True)
class Component:
    key: str
    name: str
    weight: float
    reward: Reward


@dataclass
class CompositeResult:
    """``totals[i] = sum_k weights[k] * components[k][i]``; ``components`` holds the raw (unweighted) scores."""

    totals: list[float]
    components: dict[str, list[float]]
    weights: dict[str, float]

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means: ``{prefix}total`` and ``{prefix}<key>`` per component (raw scores). Empty batch -> ``{}``."""
        if not self.totals:
            return {}
        out = {f"{prefix}total": sum(self.totals) / len(self.totals)}
        for key, scores in self.components.items():
            out[f"{prefix}{key}"] = sum(scores) / len(scores)
        return out


def _parse_spec(index: int, spec: Any, taken: set[str]) -> Component:
    where = f"rewards[{index}]"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{'name': ..., 'weight': ...}}, got {type(spec).__name__}")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ValueError(f"{where}.{key}: unknown key; allowed: {', '.join(SPEC_KEYS)}")
    if "name" not in spec:
        raise ValueError(f"{where}.name: missing; available rewards: {', '.join(available_rewards())}")
    name = spec["name"]
    try:
        cls = get_reward(name)
    except UnknownRewardError:
        raise ValueError(
            f"{where}.name: unknown reward {name!r}; available: {', '.join(available_rewards())}"
        ) from None

    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight):
        raise ValueError(f"{where}.weight: must be a finite number, got {weight!r}")

    params = spec.get("params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}.params: must be a mapping of keyword parameters, got {type(params).__name__}")
    bad = unknown_params(cls, params)
    if bad:
        raise ValueError(
            f"{where}.params.{bad[0]}: unknown parameter for reward {name!r}; "
            f"accepted: {', '.join(accepted_params(cls) or [])}"
        )
    try:
        reward = cls(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.params: invalid parameters for reward {name!r}: {err}") from err

    key = spec.get("key", name)
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}.key: must be a non-empty string, got {key!r}")
    if key in taken:
        raise ValueError(f"{where}.key: duplicate component key {key!r}; give repeated rewards a distinct 'key'")
    taken.add(key)
    return Component(key=key, name=name, weight=float(weight), reward=reward)


class CompositeReward(Reward):
    """Weighted sum of registered rewards.

    Built from specs ``{"name": <registered reward>, "weight": <number, default 1.0>, "params": {...},
    "key": <component name, default the reward name>}`` (a bare string is shorthand for ``{"name": s}``)::

        CompositeReward([{"name": "numeric_match", "weight": 1.0},
                         {"name": "format", "weight": 0.1},
                         {"name": "length_penalty", "weight": 0.05, "params": {"max_length": 200}}])

    Calling it returns the per-sample totals ``sum_k weight_k * score_k``; :meth:`compute` also returns the raw
    per-component scores (for metrics). Every component is computed even at weight 0 (logged, not counted). Extra
    keyword arguments are forwarded to every component. A bad spec raises ``ValueError`` naming the position and key
    (``rewards[1].name: unknown reward 'foo'; available: ...``); so do an empty spec list and batch columns of
    different lengths.
    """

    name = "composite"

    def __init__(self, rewards: Sequence[Mapping[str, Any] | str]):
        if isinstance(rewards, (str, Mapping)) or not isinstance(rewards, Sequence):
            raise ValueError(f"rewards: expected a list of reward specs, got {type(rewards).__name__}")
        if not rewards:
            raise ValueError("rewards: at least one reward spec is required")
        taken: set[str] = set()
        self.components = [_parse_spec(i, spec, taken) for i, spec in enumerate(rewards)]

    @property
    def weights(self) -> dict[str, float]:
        return {c.key: c.weight for c in self.components}

    def compute(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        answers: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> CompositeResult:
        """Totals plus the raw per-component scores."""
        refs = check_batch(prompts, completions, answers, owner=self.name)
        prompts, completions = list(prompts), list(completions)
        components = {c.key: c.reward(prompts, completions, refs, **kwargs) for c in self.components}
        totals = [
            math.fsum(c.weight * components[c.key][i] for c in self.components) for i in range(len(refs))
        ]
        return CompositeResult(totals=totals, components=components, weights=self.weights)

    def score_batch(
        self, prompts: list[str], completions: list[str], answers: list[str | None], **kwargs: Any
    ) -> list[float]:
        return self.compute(prompts, completions, answers, **kwargs).totals

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.key}*{c.weight:g}" for c in self.components)
        return f"CompositeReward({parts})"
