"""``adaptive``: Ziegler et al.'s controller, the coefficient tracks a target divergence per step
(:class:`rlkit.weights.AdaptiveKLController`); its state is checkpointed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlkit.weights import AdaptiveKLController

from .base import Weighting, WeightingConfig


class AdaptiveWeighting(WeightingConfig):
    """Ziegler et al.'s controller: the coefficient tracks a target divergence per step."""

    type: Literal["adaptive"]
    target: float = Field(gt=0)
    horizon: int = Field(10000, gt=0)


class Adaptive(Weighting):
    Config = AdaptiveWeighting

    def __init__(self, cfg: AdaptiveWeighting, coef: float):
        super().__init__(cfg, coef)
        self.controller = AdaptiveKLController(coef, cfg.target, cfg.horizon)

    def coef(self, step: int) -> float:
        return self.controller.value

    def observe(self, value: float, n_steps: int = 1) -> None:
        self.controller.update(value, n_steps)

    def state_dict(self) -> dict:
        return {"adaptive": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "adaptive" in state:
            self.controller.load_state_dict(state["adaptive"])
