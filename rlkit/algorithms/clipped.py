"""The clipped surrogate policy loss of PPO and GRPO (math: :func:`rlkit.objectives.policy_loss`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.objectives.policy import policy_loss

from .base import PolicyLoss
from .registry import POLICY_LOSSES


@POLICY_LOSSES.register("clipped")
class ClippedSurrogateLoss(PolicyLoss):
    """``agg(c max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))) + sum_r agg(coef_r w_r D_r) -
    entropy_coef agg(H)`` per token (Schulman et al. 2017; DAPO's clip-higher when ``clip_high > clip_low``).
    ``cfg``: ``clip_low``, ``clip_high``, ``aggregation``, ``norm_length``, ``entropy_coef``."""

    def __call__(
        self,
        batch,
        regularizers: Sequence = (),
        entropy: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        return policy_loss(
            batch,
            regularizers,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            aggregation=cfg.aggregation,
            norm_length=cfg.norm_length,
            entropy=entropy,
            entropy_coef=cfg.entropy_coef,
            token_weights=token_weights,
        )
