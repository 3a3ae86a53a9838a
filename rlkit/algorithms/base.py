"""The interfaces of the algorithm axes. Both are pure: tensors in, tensors out, no models or I/O.

* :class:`AdvantageEstimator`: sequence scores (and, for critic-based estimators, the critic's values) ->
  advantages ``[B]`` (one per completion) or ``[B, T]`` (one per token).
* :class:`PolicyLoss`: a :class:`~rlkit.regularizers.PolicyBatch` and the loss-placed regularizers -> the loss
  to minimise and its metrics.

Each is built once per learner from the algorithm's validated config section (``grpo`` or ``ppo``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class AdvantageInputs:
    """What an estimator may read. ``scores`` ``[B]``: the reward's sequence scores, ``group_size`` consecutive rows
    per prompt; ``penalty`` ``[B, T]``: the per-token penalty of regularizers with ``placement: reward`` (None when
    there are none); ``mask`` ``[B, T]``: completion tokens; ``correct`` ``[B]``: the reward's 0/1 flags;
    ``values`` ``[B, T]``: the critic's values of the sampled states (critic-based estimators only)."""

    scores: torch.Tensor
    mask: torch.Tensor
    group_size: int
    penalty: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def sequence_rewards(self) -> torch.Tensor:
        """``r_i = score_i - sum_t penalty_it``: the reward-placed penalty folded into the sequence reward."""
        return self.scores if self.penalty is None else self.scores - self.penalty.sum(-1)


@dataclass
class AdvantageOutput:
    """``advantages`` ``[B]`` or ``[B, T]``; ``returns`` ``[B, T]``: the value targets (critic-based only);
    ``metrics``: extra scalars for the step's log (they replace the learner's own of the same name)."""

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class AdvantageEstimator:
    """Base class: ``__call__(inputs) -> AdvantageOutput``. ``cfg`` is the algorithm's section (``GRPOConfig`` or
    ``PPOConfig``). ``needs_values``: a critic-based estimator (PPO's); the others are group-relative (GRPO's)."""

    name: ClassVar[str] = ""
    needs_values: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        raise NotImplementedError


class PolicyLoss:
    """Base class: ``__call__(batch, regularizers, entropy=None, token_weights=None) -> (loss, metrics)``.
    ``batch`` carries the policy's and the old policy's log-probs, the advantages and the references;
    ``regularizers`` are the loss-placed ones (the loss adds their penalties); ``entropy`` ``[B, T]`` the policy's
    per-token entropy (for ``entropy_coef``); ``token_weights`` ``[B, T]`` per-token weights of the surrogate
    (truncated importance sampling). Settings (clips, aggregation) come from ``cfg``, the algorithm's section."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: Any, path: str) -> None:
        """Refuse settings of the section this loss cannot honour (raise :class:`rlkit.ConfigError` naming the
        key under ``path``, the section's name); called when the recipe is validated."""

    def __call__(
        self,
        batch,
        regularizers: Sequence = (),
        entropy: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError
