"""The reward interface shared by every scorer in :mod:`reward_models`.

A reward is a class built from keyword parameters and called on a *batch*::

    reward = SomeReward(**params)
    scores = reward(prompts, completions, answers)   # -> list[float], one per sample

``prompts[i]``, ``completions[i]`` and ``answers[i]`` describe sample ``i``; ``answers[i]`` is the reference
answer or ``None`` when there is none (``answers`` itself may be ``None``: no references at all). Extra keyword
arguments are accepted and ignored unless a reward documents them, so a caller can pass per-batch context
(``step=...``) to a mixture of rewards. Batching lets model-based scorers run one forward pass per batch; rule-based
rewards subclass :class:`SampleReward` and only write :meth:`SampleReward.score`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class RewardFn(Protocol):
    """Anything callable like a reward: ``(prompts, completions, answers, **kwargs) -> list[float]``."""

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        answers: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[float]: ...


def check_batch(
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str | None] | None,
    owner: str = "reward",
) -> list[str | None]:
    """Validate that the three batch columns line up; return ``answers`` as a list (all ``None`` if omitted).

    Raises ``ValueError`` naming the lengths when ``prompts``/``completions``/``answers`` differ in length, and
    ``TypeError`` when a column is a bare string (a common slip: ``reward("p", "c", "a")`` instead of lists).
    """
    for label, column in (("prompts", prompts), ("completions", completions), ("answers", answers)):
        if isinstance(column, (str, bytes)):
            raise TypeError(f"{owner}: {label} must be a list of strings, got a single string")
    if answers is None:
        answers = [None] * len(completions)
    if not (len(prompts) == len(completions) == len(answers)):
        raise ValueError(
            f"{owner}: batch length mismatch: len(prompts)={len(prompts)}, "
            f"len(completions)={len(completions)}, len(answers)={len(answers)}"
        )
    return list(answers)


class Reward(ABC):
    """Base class of batched rewards. Subclasses implement :meth:`score_batch`; ``__call__`` validates the batch.

    ``name`` is filled in by :func:`reward_models.register_reward`.
    """

    name: ClassVar[str] = ""

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        answers: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        refs = check_batch(prompts, completions, answers, owner=self.name or type(self).__name__)
        scores = self.score_batch(list(prompts), list(completions), refs, **kwargs)
        if len(scores) != len(refs):
            raise RuntimeError(f"{type(self).__name__} returned {len(scores)} scores for {len(refs)} samples")
        return [float(s) for s in scores]

    @abstractmethod
    def score_batch(
        self, prompts: list[str], completions: list[str], answers: list[str | None], **kwargs: Any
    ) -> list[float]:
        """Score an already-validated batch (equal-length lists)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SampleReward(Reward):
    """A reward that scores each sample independently (all rule-based rewards)."""

    def score_batch(
        self, prompts: list[str], completions: list[str], answers: list[str | None], **kwargs: Any
    ) -> list[float]:
        return [self.score(p, c, a) for p, c, a in zip(prompts, completions, answers)]

    @abstractmethod
    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        """Score one sample."""
