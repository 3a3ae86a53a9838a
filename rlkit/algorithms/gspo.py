"""GSPO's sequence-level clipped surrogate as a policy loss (math: :func:`rlkit.objectives.gspo.gspo_loss`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.objectives.gspo import gspo_loss

from .base import PolicyLoss
from .registry import POLICY_LOSSES


@POLICY_LOSSES.register("gspo")
class GSPOLoss(PolicyLoss):
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071): the clip acts on the
    length-normalised sequence ratio ``s_i``; ``cfg.clip_low``/``cfg.clip_high`` are its clip range (the paper
    uses 3e-4/4e-4: set them, PPO's 0.2 is far too wide for a sequence ratio). Token weights (``grpo.tis_cap``)
    have no sequence-level meaning here and are refused."""

    @classmethod
    def check(cls, cfg, path: str) -> None:
        from rlkit._config import ConfigError

        from .registry import ADVANTAGES

        if cfg.tis_cap is not None:
            raise ConfigError(f"{path}.tis_cap", "policy_loss 'gspo' weighs whole sequences; token weights don't apply")
        if ADVANTAGES.get(cfg.advantage, f"{path}.advantage").needs_values:
            raise ConfigError(
                f"{path}.policy_loss", f"'gspo' takes one advantage per sequence; {cfg.advantage!r} gives one per token"
            )

    def __call__(
        self,
        batch,
        regularizers: Sequence = (),
        entropy: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if token_weights is not None:
            raise ValueError("policy_loss 'gspo' takes no token weights: unset grpo.tis_cap")
        cfg = self.cfg
        return gspo_loss(
            batch,
            regularizers,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            aggregation=cfg.aggregation,
            norm_length=cfg.norm_length,
            entropy=entropy,
            entropy_coef=cfg.entropy_coef,
        )
