"""Weightings of a regularizer: constant, scheduled, adaptive (target KL), and per-sample (DADS, PACED)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import Field

from rlkit._config import StrictModel
from rlkit.weights import AdaptiveKLController, dads_weights, paced_weights, scheduled_coef


class ConstantWeighting(StrictModel):
    type: Literal["constant"] = "constant"


class ScheduledWeighting(StrictModel):
    """Coefficient moves from ``coef`` to ``end`` over ``total_steps`` (after ``warmup_steps`` at ``coef``)."""

    type: Literal["linear", "cosine"]
    end: float = Field(ge=0)
    total_steps: int = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)


class AdaptiveWeighting(StrictModel):
    """Ziegler et al.'s controller: the coefficient tracks a target divergence per step."""

    type: Literal["adaptive"]
    target: float = Field(gt=0)
    horizon: int = Field(10000, gt=0)


class DadsWeighting(StrictModel):
    """APO's DADS: per-sample ``1 - exp(-eta * acc)`` on positive-advantage samples."""

    type: Literal["dads"]
    eta: float = Field(1.0, gt=0)


class PacedWeighting(StrictModel):
    """Per-sample Beta kernel ``acc^a (1-acc)^b`` (PACED), normalized to a maximum of 1."""

    type: Literal["paced"]
    a: float = Field(1.0, ge=0)
    b: float = Field(1.0, ge=0)


WeightingConfig = Annotated[
    Union[ConstantWeighting, ScheduledWeighting, AdaptiveWeighting, DadsWeighting, PacedWeighting],
    Field(discriminator="type"),
]


def coerce_weighting(value):
    """Accept ``"dads"`` as shorthand for ``{type: dads}``."""
    return {"type": value} if isinstance(value, str) else value


class Weighting:
    """Runtime weighting: a scalar coefficient per step and optional per-sample weights."""

    def __init__(self, cfg, coef: float):
        self.cfg, self.base = cfg, float(coef)
        self.controller = AdaptiveKLController(coef, cfg.target, cfg.horizon) if cfg.type == "adaptive" else None

    def coef(self, step: int) -> float:
        t = self.cfg.type
        if t in ("linear", "cosine"):
            return scheduled_coef(step, self.base, self.cfg.end, self.cfg.total_steps, self.cfg.warmup_steps, t)
        if self.controller is not None:
            return self.controller.value
        return self.base

    def sample_weights(self, batch) -> torch.Tensor | None:
        if self.cfg.type == "dads":
            return dads_weights(batch.require("accuracy", "dads"), batch.require("advantages", "dads"), self.cfg.eta)
        if self.cfg.type == "paced":
            return paced_weights(batch.require("accuracy", "paced"), self.cfg.a, self.cfg.b)
        return None

    def observe(self, value: float, n_steps: int = 1) -> None:
        if self.controller is not None:
            self.controller.update(value, n_steps)

    def state_dict(self) -> dict:
        return {"adaptive": self.controller.state_dict()} if self.controller is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.controller is not None and "adaptive" in state:
            self.controller.load_state_dict(state["adaptive"])


def build_weighting(cfg, coef: float) -> Weighting:
    return Weighting(cfg, coef)
