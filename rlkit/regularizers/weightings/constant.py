"""``constant``: the regularizer's ``coef`` at every step, no per-sample weights (the default)."""

from __future__ import annotations

from typing import Literal

from .base import Weighting, WeightingConfig


class ConstantWeighting(WeightingConfig):
    type: Literal["constant"] = "constant"


class Constant(Weighting):
    Config = ConstantWeighting
