"""``paced``: the per-sample Beta kernel of PACED on the group accuracy, :func:`rlkit.weights.paced_weights`."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlkit.weights import paced_weights

from .base import Weighting, WeightingConfig


class PacedWeighting(WeightingConfig):
    """Per-sample Beta kernel ``acc^a (1-acc)^b`` (PACED). ``normalize`` (default) divides by the kernel's peak so
    the maximum weight is 1 (at ``a = b = 1``: ``4 acc (1 - acc)``, 4x the paper's raw ``acc (1 - acc)``);
    ``normalize: false`` is the raw kernel as the paper writes it (see :func:`rlkit.weights.paced_weights`)."""

    type: Literal["paced"]
    a: float = Field(1.0, ge=0)
    b: float = Field(1.0, ge=0)
    normalize: bool = True


class Paced(Weighting):
    Config = PacedWeighting
    cfg: PacedWeighting  # the instance of ``Config`` the base stores
    needs_rewards = True

    def weights(self, batch) -> torch.Tensor:
        return paced_weights(batch.require("accuracy", "paced"), self.cfg.a, self.cfg.b, self.cfg.normalize)
