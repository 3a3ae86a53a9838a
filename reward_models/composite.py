"""``CompositeReward``: a weighted sum of registered rewards with a per-component breakdown and error isolation.

Isolation design (per component, per :meth:`CompositeReward.compute` call):

1. The component scores the whole batch -- inline, or in a daemon worker thread waited on for ``timeout_s``
   (a :class:`concurrent.futures.Future` filled by a ``threading.Thread(daemon=True)``; not a ``ThreadPoolExecutor``,
   whose non-daemon workers would block interpreter exit behind a hung reward).
2. If that call raises or times out, the batch is re-scored **one sample at a time**, so only the offending samples
   are affected. Each call again gets ``timeout_s``, and the whole fallback shares a budget of
   ``FALLBACK_BUDGET_FACTOR * timeout_s``: samples not reached before it runs out count as failures without being
   scored, so a batch full of hanging samples costs at most ``(1 + FALLBACK_BUDGET_FACTOR) * timeout_s``, not
   ``batch * timeout_s``. A batch error that no single sample reproduces is recovered from the per-sample scores.
3. A failed sample (exception, timeout, NaN/inf score, budget exhausted) scores ``0.0`` and is counted in
   :attr:`CompositeResult.failures` (``on_error: zero``, the default), or raises :class:`RewardComponentError`
   naming the component key and the sample index (``on_error: fail``).

A Python thread cannot be killed: a timed-out call keeps running in the background until it returns (and may run
concurrently with the next call of the same reward). Timeouts here bound the trainer's wait, not the work; for hard
isolation of untrusted code use a reward that runs it in a subprocess, like ``code_tests`` (:mod:`.sandbox`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from .base import Reward, check_batch
from .registry import UnknownRewardError, accepted_params, available_rewards, get_reward, unknown_params

SPEC_KEYS = ("name", "weight", "params", "key", "on_error", "timeout_s")
ON_ERROR_MODES = ("zero", "fail")
#: total wall-clock budget of a per-sample fallback, in multiples of the component's ``timeout_s``
FALLBACK_BUDGET_FACTOR = 4.0

log = logging.getLogger(__name__)


class RewardComponentError(RuntimeError):
    """A component failed on a sample under ``on_error: fail``; ``key`` and ``index`` say which (cause chained)."""

    def __init__(self, key: str, index: int, cause: BaseException):
        self.key, self.index = key, index
        super().__init__(f"reward component {key!r} failed on sample {index}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class Component:
    key: str
    name: str
    weight: float
    reward: Reward
    on_error: str = "zero"
    timeout_s: float | None = None


def _call(fn: Callable[[], list[float]], timeout_s: float | None, label: str) -> list[float]:
    """``fn()``, or ``TimeoutError`` if it has not returned after ``timeout_s`` (run in a daemon thread then)."""
    if timeout_s is None:
        return fn()
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as err:  # handed to the waiting caller
            future.set_exception(err)

    threading.Thread(target=target, name=f"rlkit-reward-{label}", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        if future.done():  # the reward itself raised a TimeoutError
            raise
        raise TimeoutError(f"no result within timeout_s={timeout_s:g}") from None


@dataclass
class CompositeResult:
    """``totals[i] = sum_k weights[k] * components[k][i]``; ``components`` holds the raw (unweighted) scores."""

    totals: list[float]
    components: dict[str, list[float]]
    weights: dict[str, float]
    #: per component key, how many samples failed (exception, timeout or non-finite score) and got ``0.0``
    failures: dict[str, int] = field(default_factory=dict)

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means: ``{prefix}total`` and ``{prefix}<key>`` per component (raw scores), plus failure counts
        ``{prefix}failures/<key>`` per component (0 when none). Empty batch -> ``{}``."""
        if not self.totals:
            return {}
        out = {f"{prefix}total": sum(self.totals) / len(self.totals)}
        for key, scores in self.components.items():
            out[f"{prefix}{key}"] = sum(scores) / len(scores)
        for key in self.components:
            out[f"{prefix}failures/{key}"] = float(self.failures.get(key, 0))
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
    on_error = spec.get("on_error", "zero")
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"{where}.on_error: must be one of {', '.join(map(repr, ON_ERROR_MODES))}, got {on_error!r}")
    timeout_s = spec.get("timeout_s")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, Real) or not math.isfinite(timeout_s) or timeout_s <= 0
    ):
        raise ValueError(f"{where}.timeout_s: must be a positive number of seconds or null, got {timeout_s!r}")
    taken.add(key)
    return Component(
        key=key,
        name=name,
        weight=float(weight),
        reward=reward,
        on_error=on_error,
        timeout_s=None if timeout_s is None else float(timeout_s),
    )


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

    Two more spec keys isolate failures (see the module docstring): ``on_error`` (``"zero"``, default: a sample whose
    score raises, times out or is NaN/inf gets 0.0 and is counted in ``result.failures`` and the
    ``failures/<key>`` metric; ``"fail"``: :class:`RewardComponentError` naming the key and sample index) and
    ``timeout_s`` (wall-clock limit per call, default none).
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
        components: dict[str, list[float]] = {}
        failures: dict[str, int] = {}
        for c in self.components:
            components[c.key], failures[c.key] = self._score_component(c, prompts, completions, refs, kwargs)
        totals = [math.fsum(c.weight * components[c.key][i] for c in self.components) for i in range(len(refs))]
        return CompositeResult(totals=totals, components=components, weights=self.weights, failures=failures)

    def _score_component(
        self, c: Component, prompts: list[str], completions: list[str], refs: list[str | None], kwargs: dict
    ) -> tuple[list[float], int]:
        """Scores of one component and its failure count: whole batch first, per sample if that fails."""
        try:
            scores = _call(lambda: c.reward(prompts, completions, refs, **kwargs), c.timeout_s, c.key)
        except Exception as err:
            log.warning(
                "reward %r failed on a batch of %d (%s: %s); scoring per sample",
                c.key,
                len(refs),
                type(err).__name__,
                err,
            )
            return self._score_per_sample(c, prompts, completions, refs, kwargs)
        failed = 0
        for i, value in enumerate(scores):
            if not math.isfinite(value):
                self._failed(c, i, ValueError(f"non-finite score {value!r}"))
                scores[i], failed = 0.0, failed + 1
        return scores, failed

    def _score_per_sample(
        self, c: Component, prompts: list[str], completions: list[str], refs: list[str | None], kwargs: dict
    ) -> tuple[list[float], int]:
        deadline = None if c.timeout_s is None else time.monotonic() + FALLBACK_BUDGET_FACTOR * c.timeout_s
        scores: list[float] = []
        failed = 0
        for i in range(len(refs)):
            try:
                limit = c.timeout_s
                if deadline is not None:
                    assert c.timeout_s is not None  # the deadline is only set with a timeout
                    limit = min(c.timeout_s, deadline - time.monotonic())
                    if limit <= 0:
                        raise TimeoutError(f"per-sample fallback budget ({FALLBACK_BUDGET_FACTOR:g} x timeout_s) spent")
                one = lambda i=i: c.reward([prompts[i]], [completions[i]], [refs[i]], **kwargs)  # noqa: E731
                value = _call(one, limit, c.key)[0]
                if not math.isfinite(value):
                    raise ValueError(f"non-finite score {value!r}")
            except Exception as err:
                self._failed(c, i, err)
                value, failed = 0.0, failed + 1
            scores.append(value)
        return scores, failed

    @staticmethod
    def _failed(c: Component, index: int, err: Exception) -> None:
        """Raise :class:`RewardComponentError` under ``on_error: fail``; otherwise just log at debug level."""
        if c.on_error == "fail":
            raise RewardComponentError(c.key, index, err) from err
        log.debug("reward %r failed on sample %d: %s: %s", c.key, index, type(err).__name__, err)

    def score_batch(
        self, prompts: list[str], completions: list[str], answers: list[str | None], **kwargs: Any
    ) -> list[float]:
        return self.compute(prompts, completions, answers, **kwargs).totals

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.key}*{c.weight:g}" for c in self.components)
        return f"CompositeReward({parts})"
