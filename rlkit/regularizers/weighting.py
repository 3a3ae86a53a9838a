"""Weightings of a regularizer: constant, scheduled, adaptive (target KL), and per-sample (DADS, PACED).

Every weighting also takes ``only_incorrect`` (KDRL's reward-guided masking, arXiv 2506.02208): the per-sample
weight is multiplied by 1 for incorrect responses and 0 for correct ones. It is a field of every weighting rather
than a weighting of its own because a regularizer has one ``weighting`` and KDRL combines the mask with an annealed
coefficient (``{type: linear, end: 0.001, total_steps: N, only_incorrect: true}``). It needs the per-sample
``correct`` flags in ``PolicyBatch.extras["correct"]`` (the GRPO learner puts them there).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import torch
from pydantic import Field

from rlkit._config import StrictModel
from rlkit.weights import AdaptiveKLController, dads_weights, incorrect_mask, paced_weights, scheduled_coef


class _WeightingBase(StrictModel):
    #: KDRL's reward-guided masking: weight 0 on correct responses, 1 on incorrect ones (times any other weight)
    only_incorrect: bool = False


class ConstantWeighting(_WeightingBase):
    type: Literal["constant"] = "constant"


class ScheduledWeighting(_WeightingBase):
    """Coefficient moves from ``coef`` to ``end`` over ``total_steps`` (after ``warmup_steps`` at ``coef``)."""

    type: Literal["linear", "cosine"]
    end: float = Field(ge=0)
    total_steps: int = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)


class AdaptiveWeighting(_WeightingBase):
    """Ziegler et al.'s controller: the coefficient tracks a target divergence per step."""

    type: Literal["adaptive"]
    target: float = Field(gt=0)
    horizon: int = Field(10000, gt=0)


class DadsWeighting(_WeightingBase):
    """APO's DADS (arXiv 2506.21655): per-sample ``1 - exp(-eta * acc)`` on positive-advantage samples, 1 elsewhere
    and where ``acc`` is 0 or 1; ``eta`` defaults to Euler's number ``e``, as the reference code (View-R1) uses
    (see :func:`rlkit.weights.dads_weights`)."""

    type: Literal["dads"]
    eta: float = Field(math.e, gt=0)


class PacedWeighting(_WeightingBase):
    """Per-sample Beta kernel ``acc^a (1-acc)^b`` (PACED). ``normalize`` (default) divides by the kernel's peak so
    the maximum weight is 1 (at ``a = b = 1``: ``4 acc (1 - acc)``, 4x the paper's raw ``acc (1 - acc)``);
    ``normalize: false`` is the raw kernel as the paper writes it (see :func:`rlkit.weights.paced_weights`)."""

    type: Literal["paced"]
    a: float = Field(1.0, ge=0)
    b: float = Field(1.0, ge=0)
    normalize: bool = True


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
        """Per-sample weights ``[B]`` (None: all 1): DADS / PACED, times KDRL's incorrect-only mask."""
        w = None
        if self.cfg.type == "dads":
            w = dads_weights(batch.require("accuracy", "dads"), batch.require("advantages", "dads"), self.cfg.eta)
        elif self.cfg.type == "paced":
            w = paced_weights(batch.require("accuracy", "paced"), self.cfg.a, self.cfg.b, self.cfg.normalize)
        if self.cfg.only_incorrect:
            correct = batch.extras.get("correct")
            if correct is None:
                raise ValueError("weighting.only_incorrect needs the per-sample correctness flags in "
                                 "batch.extras['correct'] (the GRPO learner sets them), which are missing")
            mask = incorrect_mask(torch.as_tensor(correct))
            w = mask if w is None else w * mask
        return w

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
