"""``linear`` / ``cosine``: the coefficient moves from ``coef`` to ``end`` over ``total_steps`` (after
``warmup_steps`` at ``coef``); see :func:`rlkit.weights.scheduled_coef`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlkit.weights import scheduled_coef

from .base import Weighting, WeightingConfig


class ScheduledWeighting(WeightingConfig):
    """Coefficient moves from ``coef`` to ``end`` over ``total_steps`` (after ``warmup_steps`` at ``coef``)."""

    type: Literal["linear", "cosine"]
    end: float = Field(ge=0)
    total_steps: int = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)


class Scheduled(Weighting):
    """One class for both shapes, registered under both names; ``cfg.type`` picks the curve."""

    Config = ScheduledWeighting
    cfg: ScheduledWeighting  # the instance of ``Config`` the base stores

    def coef(self, step: int) -> float:
        c = self.cfg
        return scheduled_coef(step, self.base, c.end, c.total_steps, c.warmup_steps, c.type)
