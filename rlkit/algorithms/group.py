"""Group-relative advantage estimators (one advantage per completion, from its group's rewards): GRPO, Dr. GRPO,
RLOO, each optionally followed by APO's STCR scaling (``cfg.stcr``). The math is in :mod:`rlkit.advantages`."""

from __future__ import annotations

import torch

from rlkit.advantages import group_advantages, rloo_advantages, stcr_scale

from .base import AdvantageEstimator, AdvantageInputs, AdvantageOutput
from .registry import ADVANTAGES


class GroupAdvantage(AdvantageEstimator):
    """Base of the group-relative estimators: :meth:`group` maps the sequence rewards ``[P * G]`` (the G samples
    of each prompt contiguous) to advantages ``[P * G]``; with ``cfg.stcr``, over-long wrong answers are then
    scaled by :func:`rlkit.advantages.stcr_scale` (lengths from the mask, ``correct`` from the reward)."""

    def group(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        adv = self.group(inputs.sequence_rewards(), inputs.group_size)
        if self.cfg.stcr:
            if inputs.correct is None:
                raise ValueError("grpo.stcr needs the per-sample correct flags")
            adv = stcr_scale(adv, inputs.mask.sum(-1), inputs.correct, inputs.group_size, self.cfg.stcr_base)
        return AdvantageOutput(adv)


@ADVANTAGES.register("grpo")
class GRPOAdvantage(GroupAdvantage):
    """``A_i = (r_i - mean_g r) / (std_g r + eps)`` (Shao et al. 2024, arXiv 2402.03300)."""

    def group(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale_std=True)


@ADVANTAGES.register("drgrpo")
class DrGRPOAdvantage(GroupAdvantage):
    """``A_i = r_i - mean_g r``: no std scaling (Liu et al. 2025, Dr. GRPO, arXiv 2503.20783)."""

    def group(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale_std=False)


@ADVANTAGES.register("rloo")
class RLOOAdvantage(GroupAdvantage):
    """``A_i = r_i - mean_{j != i} r_j`` (Ahmadian et al. 2024, arXiv 2402.14740)."""

    def group(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return rloo_advantages(rewards, group_size)
